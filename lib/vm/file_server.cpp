#include "vm/file_server.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace hvtrace::vm {

namespace {

void send_all(int fd, const std::string& s) {
  for (std::size_t off = 0; off < s.size();) {
    const ssize_t w = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += static_cast<std::size_t>(w);
  }
}

std::string reply(int code, std::string_view reason, const std::string& body) {
  return fmt::format("HTTP/1.0 {} {}\r\nContent-Length: {}\r\nContent-Type: {}\r\nConnection: close\r\n\r\n", code,
                     reason, body.size(), code == 200 ? "application/octet-stream" : "text/plain") +
         body;
}

}  // namespace

Result<std::unique_ptr<FileServer>> FileServer::start(std::filesystem::path dir, std::uint16_t port) {
  if (!std::filesystem::is_directory(dir)) return make_error("file server: {} is not a directory", dir.string());
  auto s = std::unique_ptr<FileServer>(new FileServer());
  s->dir_ = std::move(dir);
  s->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->listen_fd_ < 0) return make_error("file server: socket: {}", strerror(errno));
  const int one = 1;
  setsockopt(s->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(s->listen_fd_, 16) != 0)
    return make_error("file server: cannot listen on 127.0.0.1:{}: {}", port, strerror(errno));
  socklen_t len = sizeof a;
  getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  s->port_ = ntohs(a.sin_port);
  if (pipe2(s->stop_pipe_, O_CLOEXEC) != 0) return make_error("file server: pipe: {}", strerror(errno));
  s->thread_ = std::thread([p = s.get()] { p->serve(); });
  return s;
}

FileServer::~FileServer() {
  if (stop_pipe_[1] >= 0) (void)!write(stop_pipe_[1], "x", 1);
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, stop_pipe_[0], stop_pipe_[1]})
    if (fd >= 0) close(fd);
}

void FileServer::serve() {
  while (true) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents != 0) return;
    const int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    answer(c);
    close(c);
  }
}

void FileServer::answer(int c) {
  std::string req;
  char buf[4096];
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos && req.size() < 16384) {
    pollfd p{c, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) return;  // a client that says nothing for 10 s is dropped
    const ssize_t n = read(c, buf, sizeof buf);
    if (n <= 0) break;
    req.append(buf, static_cast<std::size_t>(n));
  }
  ++requests_;
  std::istringstream line(req.substr(0, req.find('\n')));
  std::string method, target;
  line >> method >> target;
  if (method != "GET" && method != "HEAD") return send_all(c, reply(405, "Method Not Allowed", "GET only\n"));
  const std::string name = target.size() > 1 && target[0] == '/' ? target.substr(1, target.find('?') - 1) : "";
  const auto path = dir_ / name;
  std::error_code ec;
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name.front() == '.' || !std::filesystem::is_regular_file(path, ec))
    return send_all(c, reply(404, "Not Found", "not found\n"));
  std::ifstream in(path, std::ios::binary);
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string r = reply(200, "OK", body);
  if (method == "HEAD") r.resize(r.size() - body.size());
  send_all(c, r);
}

}  // namespace hvtrace::vm
