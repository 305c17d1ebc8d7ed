// nats-server processes on free loopback ports in a directory of one's choosing, for the tests and
// the benchmark (not used by hvtrace itself): one node or a cluster, JetStream on or off, each
// node killed and restarted at will (same ports, same store).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace hvtrace::publish {

int free_loopback_port();
// The first of `n` consecutive ports free on 127.0.0.1 (e.g. a farm's --ssh-ports range); throws if none.
int free_loopback_range(int n);
bool loopback_port_open(int port);
// Starts argv with stdin from /dev/null and stdout+stderr appended to `log`; -1 on failure.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::filesystem::path& log);
// The exit status (128+signal when killed), or -1 if still running after `limit`.
int wait_exit(pid_t pid, std::chrono::milliseconds limit);

class LocalNats {
 public:
  struct Node {
    std::string name;
    int port = 0, cluster_port = 0;
    std::filesystem::path conf, log;
    pid_t pid = -1;
    [[nodiscard]] std::string url() const;
  };
  // `prefix`: server and cluster names (prefix-1, ...). Writes the configs; start() starts them.
  LocalNats(const std::filesystem::path& dir, int nodes, const std::string& prefix, bool jetstream = true);
  ~LocalNats();   // SIGTERM, then SIGKILL, to every node still running
  LocalNats(const LocalNats&) = delete;
  LocalNats& operator=(const LocalNats&) = delete;

  // Starts every node and waits until each listens; throws std::runtime_error with the log.
  void start();
  void start(int node);
  void kill(int node, int sig);
  [[nodiscard]] const Node& node(int i) const { return nodes_[static_cast<std::size_t>(i)]; }
  [[nodiscard]] std::string urls() const;   // nats://127.0.0.1:P1,...

 private:
  std::vector<Node> nodes_;
};

}  // namespace hvtrace::publish
