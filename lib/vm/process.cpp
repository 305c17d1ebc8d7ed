#include "vm/process.hpp"

#include "vm/vm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace hvtrace::vm {

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("wait status {:#x}", status);
}

Result<ProcessResult> run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                                  std::size_t max_output, const ProcessIo& io) {
  if (argv.empty()) return make_error("run_process: empty command");
  int out_pipe[2];
  int err_pipe[2] = {-1, -1};
  int in_pipe[2] = {-1, -1};   // a socket pair (below)
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return make_error("pipe: {}", strerror(errno));
  // The input through a socket pair, not a pipe: send(MSG_NOSIGNAL) to a child that closed its end
  // fails with EPIPE instead of raising SIGPIPE here.
  if (pipe2(err_pipe, O_CLOEXEC) != 0 || (io.input && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pipe) != 0)) {
    const int e = errno;
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    return make_error("pipe: {}", strerror(e));
  }
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  const pid_t pid = fork();
  if (pid < 0) return make_error("fork: {}", strerror(errno));
  if (pid == 0) {
    if (io.input) {
      dup2(in_pipe[0], 0);
    } else if (!io.pass_stdin) {
      const int devnull = open("/dev/null", O_RDONLY);
      if (devnull >= 0) dup2(devnull, 0);
    }
    if (!io.pass_stdout) dup2(out_pipe[1], 1);  // else the pipe closes at exec and reads as EOF
    dup2(err_pipe[1], 2);
    execvp(cargv[0], cargv.data());
    dprintf(2, "cannot run %s: %s\n", cargv[0], strerror(errno));
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  // The input goes in as the child reads it, between reads of its output (no deadlock on a child
  // that writes before it has read everything).
  std::string_view input = io.input.value_or(std::string_view{});
  int in_fd = -1;
  if (io.input) {
    close(in_pipe[0]);
    in_fd = in_pipe[1];
    if (input.empty()) {
      close(in_fd);
      in_fd = -1;
    }
  }

  ProcessResult r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[3] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}, {in_fd, POLLOUT, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  bool timed_out = false;
  bool too_big = false;
  bool interrupted = false;
  char buf[65536];
  while (open_fds > 0) {
    if (termination_requested() && !io.survive_termination) {
      interrupted = true;
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    const int n = poll(fds, 3, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    if (fds[2].fd >= 0 && (fds[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t put = send(fds[2].fd, input.data(), input.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (put > 0) input.remove_prefix(static_cast<std::size_t>(put));
      if (input.empty() || (put < 0 && errno != EAGAIN && errno != EINTR)) {   // all in, or the child closed its end
        close(fds[2].fd);
        fds[2].fd = -1;
      }
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0 && i == 1 && io.tee_stderr) {
        (void)!write(2, buf, static_cast<std::size_t>(got));
        const std::size_t room = ProcessIo::kTeeKeep - std::min(ProcessIo::kTeeKeep, r.err.size());
        const std::size_t keep = std::min(static_cast<std::size_t>(got), room);
        r.err.append(buf, keep);
      } else if (got > 0) {
        if (sinks[i]->size() + static_cast<std::size_t>(got) > max_output) {
          too_big = true;
          break;
        }
        sinks[i]->append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
    if (too_big) break;
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);   // an input not yet all written included
  if (timed_out || too_big || interrupted) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (interrupted) return make_error("{} interrupted by a termination signal", argv[0]);
  if (timed_out) return make_error("{} did not finish within {} ms (killed)", argv[0], timeout.count());
  if (too_big) return make_error("{} printed more than {} bytes (killed)", argv[0], max_output);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace hvtrace::vm
