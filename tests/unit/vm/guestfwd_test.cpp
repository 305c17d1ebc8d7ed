// Guest forwards (containment, lib/vm/guestfwd.hpp): only loopback targets are accepted, the
// specs read back, and the per-connection relay carries bytes both ways with half-closes, as QEMU
// runs it (the guest's connection on stdin/stdout).
#include "vm/file_server.hpp"
#include "vm/guestfwd.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace hvtrace::vm {
namespace {

TEST(GuestForward, ParsesOurFormAndQemusSpelling) {
  for (const char* spec : {"tcp:10.0.2.100:80-127.0.0.1:8080", "10.0.2.100:80-127.0.0.1:8080",
                           "tcp:10.0.2.100:80-tcp:127.0.0.1:8080", "tcp:10.0.2.100:80-localhost:8080"}) {
    SCOPED_TRACE(spec);
    auto f = parse_guest_forward(spec);
    ASSERT_TRUE(f.ok()) << f.error().message;
    EXPECT_EQ(f->guest_addr, "10.0.2.100");
    EXPECT_EQ(f->guest_port, 80);
    EXPECT_EQ(f->host_addr, "127.0.0.1");
    EXPECT_EQ(f->host_port, 8080);
    EXPECT_EQ(guest_forward_spec(*f), "tcp:10.0.2.100:80-127.0.0.1:8080");
  }
  auto other_loopback = parse_guest_forward("tcp:10.0.2.50:4444-127.0.0.2:9");
  ASSERT_TRUE(other_loopback.ok()) << other_loopback.error().message;
  EXPECT_EQ(other_loopback->host_addr, "127.0.0.2");
}

TEST(GuestForward, RefusesEverythingButALoopbackTcpServer) {
  const std::pair<const char*, const char*> bad[] = {
      {"tcp:10.0.2.100:80-10.0.0.1:80", "not a loopback address"},
      {"tcp:10.0.2.100:80-1.1.1.1:80", "not a loopback address"},
      {"tcp:10.0.2.100:80-example.com:80", "not a loopback address"},
      {"tcp:10.0.2.100:80-cmd:nc 1.1.1.1 80", "loopback"},
      {"tcp:10.0.2.100:80-unix:/tmp/x", "loopback"},
      {"udp:10.0.2.100:53-127.0.0.1:53", "only TCP"},
      {"tcp:10.0.2.2:80-127.0.0.1:80", "is taken"},
      {"tcp:10.0.2.3:53-127.0.0.1:53", "is taken"},
      {"tcp:10.0.2.15:80-127.0.0.1:80", "is taken"},
      {"tcp:192.168.1.1:80-127.0.0.1:80", "10.0.2.0/24"},
      {"tcp:10.0.2.100:0-127.0.0.1:80", "not 1..65535"},
      {"tcp:10.0.2.100:80-127.0.0.1:70000", "not 1..65535"},
      {"tcp:10.0.2.100:80", "expected tcp:"},
      {"", "expected tcp:"},
  };
  for (const auto& [spec, why] : bad) {
    SCOPED_TRACE(spec);
    auto f = parse_guest_forward(spec);
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.error().message.find(why), std::string::npos) << f.error().message;
  }
  GuestForward built;
  built.host_addr = "10.1.2.3";
  built.host_port = 80;
  EXPECT_FALSE(validate_guest_forward(built).ok());
}

// A one-shot server on 127.0.0.1 that reads the request to EOF, answers, and closes.
struct EchoUpperServer {
  EchoUpperServer() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(fd, 4);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this] {
      const int c = accept(fd, nullptr, nullptr);
      std::string got;
      char buf[4096];
      ssize_t n;
      while ((n = read(c, buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
      const std::string reply = "got " + std::to_string(got.size()) + " bytes: " + got;
      (void)write(c, reply.data(), reply.size());
      close(c);
    });
  }
  ~EchoUpperServer() {
    thread.join();
    close(fd);
  }
  int fd = -1;
  std::uint16_t port = 0;
  std::thread thread;
};

TEST(GuestForwardRelay, CarriesBothWaysAndPassesHalfClosesOn) {
  EchoUpperServer server;
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  const pid_t pid = fork();
  if (pid == 0) {  // as QEMU starts it: the connection on stdin, stdout and stderr
    dup2(sp[1], 0);
    dup2(sp[1], 1);
    dup2(sp[1], 2);
    close(sp[0]);
    close(sp[1]);
    _exit(run_guest_forward_relay("127.0.0.1", server.port));
  }
  close(sp[1]);
  const std::string request = "GET /tool HTTP/1.0\r\n\r\n";
  ASSERT_EQ(write(sp[0], request.data(), request.size()), static_cast<ssize_t>(request.size()));
  shutdown(sp[0], SHUT_WR);  // the server answers only after our EOF: it must be passed on
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(sp[0], buf, sizeof buf)) > 0) reply.append(buf, static_cast<std::size_t>(n));
  close(sp[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(reply, "got " + std::to_string(request.size()) + " bytes: " + request);
}

TEST(GuestForwardRelay, RefusesANonLoopbackTargetWithoutConnecting) {
  int sp[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(sp[1], 0);
    dup2(sp[1], 1);
    close(sp[0]);
    close(sp[1]);
    _exit(run_guest_forward_relay("192.0.2.1", 80));
  }
  close(sp[1]);
  char c;
  EXPECT_EQ(read(sp[0], &c, 1), 0);  // closed at once, nothing written
  close(sp[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}

std::string http_get(std::uint16_t port, const std::string& target) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "connect failed";
  const std::string req = "GET " + target + " HTTP/1.0\r\nHost: x\r\n\r\n";
  (void)write(fd, req.data(), req.size());
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) reply.append(buf, static_cast<std::size_t>(n));
  close(fd);
  return reply;
}

TEST(FileServer, ServesTheFilesOfItsDirectoryAndNothingElse) {
  char tmpl[] = "/tmp/hvtrace-fs-XXXXXX";
  const std::filesystem::path dir = mkdtemp(tmpl);
  std::ofstream(dir / "tool.sh") << "echo tool\n";
  std::filesystem::create_directories(dir / "sub");
  std::ofstream(dir / "sub" / "hidden") << "no";
  std::ofstream(dir / ".secret") << "no";
  {
    auto s = FileServer::start(dir);
    ASSERT_TRUE(s.ok()) << s.error().message;
    const std::string ok = http_get((*s)->port(), "/tool.sh");
    EXPECT_EQ(ok.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << ok;
    EXPECT_NE(ok.find("Content-Length: 10\r\n"), std::string::npos) << ok;
    EXPECT_EQ(ok.substr(ok.size() - 10), "echo tool\n");
    for (const char* bad : {"/sub/hidden", "/../etc/passwd", "/.secret", "/", "/nope"})
      EXPECT_EQ(http_get((*s)->port(), bad).rfind("HTTP/1.0 404", 0), 0u) << bad;
    EXPECT_EQ((*s)->requests(), 6u);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hvtrace::vm
