// The client side of the control channel against a scripted peer on a real unix socket: a reply to
// a request the client gave up on is skipped rather than taken as the answer to the next request,
// a signal during the wait does not end the wait, and a reply from the future is still an error.
#include "events/control_client.hpp"

#include "hvtrace/abi/control.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

namespace hvtrace::events {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

abi::Reply reply_to(const abi::CtlHeader& req, std::uint32_t id, std::uint32_t generation) {
  abi::Reply r{};
  r.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion), req.type, sizeof(abi::Reply), id};
  r.generation = generation;
  std::snprintf(r.message, sizeof r.message, "ok");
  return r;
}

// A one-connection peer: for each message it receives, `script` sends whatever replies it likes.
class ScriptedMonitor {
 public:
  using Script = std::function<void(int fd, const abi::CtlHeader& req, unsigned nth)>;
  explicit ScriptedMonitor(Script script) : script_(std::move(script)) {
    path_ = fs::temp_directory_path() / ("hvtrace-ctl-test-" + std::to_string(getpid()) + ".sock");
    fs::remove(path_);
    listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 1), 0);
    thread_ = std::thread([this] {
      const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      abi::Reply buf{};
      for (unsigned nth = 0;; ++nth) {
        const ssize_t n = ::recv(c, &buf, sizeof buf, 0);
        if (n < static_cast<ssize_t>(sizeof(abi::CtlHeader))) break;
        abi::CtlHeader h{};
        std::memcpy(&h, &buf, sizeof h);
        script_(c, h, nth);
      }
      ::close(c);
    });
  }
  ~ScriptedMonitor() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    if (thread_.joinable()) thread_.join();
    fs::remove(path_);
  }
  const fs::path& path() const { return path_; }

 private:
  Script script_;
  fs::path path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

void send_reply(int fd, const abi::Reply& r) { ASSERT_EQ(::send(fd, &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r)); }

TEST(ControlClient, ALateReplyToAnEarlierRequestIsSkipped) {
  // The first request is answered twice (as if its first answer had come after the client gave up
  // on it); the second request must still get its own answer, not the leftover one.
  ScriptedMonitor mon([](int fd, const abi::CtlHeader& req, unsigned nth) {
    if (nth == 0) {
      send_reply(fd, reply_to(req, req.request_id, 7));
      send_reply(fd, reply_to(req, req.request_id, 7));
    } else {
      send_reply(fd, reply_to(req, req.request_id, 8));
    }
  });
  auto c = ControlClient::connect(mon.path(), 2s);
  ASSERT_TRUE(c) << c.error().message;
  auto a = c->attach();
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(*a, 7u);
  auto b = c->set_all_dtbs();
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, 8u);
  auto s = c->stats();
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->generation, 8u);
}

TEST(ControlClient, AReplyToAFutureRequestIsAnError) {
  ScriptedMonitor mon([](int fd, const abi::CtlHeader& req, unsigned) { send_reply(fd, reply_to(req, req.request_id + 5, 1)); });
  auto c = ControlClient::connect(mon.path(), 2s);
  ASSERT_TRUE(c) << c.error().message;
  auto a = c->attach();
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message.find("reply to request"), std::string::npos) << a.error().message;
}

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1); }

TEST(ControlClient, ASignalDuringTheWaitDoesNotEndIt) {
  // A handled signal (Ctrl-C in hvtrace) interrupts poll(); the client must keep waiting for the
  // answer, or the answer arrives later and is taken for the next request's.
  struct sigaction sa{};
  sa.sa_handler = count_signal;
  struct sigaction old{};
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
  const pthread_t me = pthread_self();
  ScriptedMonitor mon([me](int fd, const abi::CtlHeader& req, unsigned) {
    std::this_thread::sleep_for(100ms);
    pthread_kill(me, SIGUSR1);
    std::this_thread::sleep_for(200ms);
    send_reply(fd, reply_to(req, req.request_id, 3));
  });
  auto c = ControlClient::connect(mon.path(), 2s);
  ASSERT_TRUE(c) << c.error().message;
  auto a = c->attach();
  ::sigaction(SIGUSR1, &old, nullptr);
  EXPECT_GE(g_signals.load(), 1);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(*a, 3u);
}

}  // namespace
}  // namespace hvtrace::events
