// A tiny HTTP/1.0 file server on the host's loopback for the lab: the "tool server" that a
// contained guest reaches through a guest forward (guestfwd.hpp), as attackers fetch their tools
// with wget. It serves the regular files directly inside one directory (`GET /NAME`; no
// subdirectories, no `..`, nothing else), one connection at a time, on its own thread.
#pragma once

#include "common/result.hpp"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <thread>

namespace hvtrace::vm {

class FileServer {
 public:
  // Listens on 127.0.0.1:port (0: any free port).
  [[nodiscard]] static Result<std::unique_ptr<FileServer>> start(std::filesystem::path dir, std::uint16_t port = 0);
  ~FileServer();
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  [[nodiscard]] std::uint16_t port() const { return port_; }
  // Requests answered so far (any status).
  [[nodiscard]] unsigned requests() const { return requests_.load(); }

 private:
  FileServer() = default;
  void serve();
  void answer(int conn);
  std::filesystem::path dir_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::atomic<unsigned> requests_{0};
  std::thread thread_;
};

}  // namespace hvtrace::vm
