// Starting, reaching and stopping a guest under QEMU TCG: the lab every other part of hvtrace
// stands on. A Vm owns one QEMU process and every file it needs, all inside one owner-only run
// directory (<run_root>/<name>/: RAM file, QMP socket, serial log, vm.json, plus whatever the
// monitor plugin puts there). Destroying the Vm, or its supervisor noticing QEMU died, removes the
// whole directory; QEMU itself gets PR_SET_PDEATHSIG so it cannot outlive its owner.
// Other processes attach to a running VM by name through the vm.json record.
#pragma once

#include "common/result.hpp"
#include "vm/guestfwd.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::vm {

namespace fs = std::filesystem;

// The default guest built by guest/build-image (kernel, initramfs, SSH key, manifest).
struct GuestImage {
  fs::path dir;
  fs::path kernel;     // vmlinuz (Debian's linux-image-amd64, unmodified)
  fs::path initrd;     // initrd.img
  fs::path ssh_key;    // private key whose public half the image authorizes for root and the user
  fs::path manifest;   // package versions used
  std::string kernel_release;  // e.g. 6.1.0-28-amd64
  std::string cmdline;         // base kernel command line the image needs (console=ttyS0 ...)
};
// $HVTRACE_CACHE/guest/default (HVTRACE_CACHE defaults to /var/cache/hvtrace).
[[nodiscard]] fs::path default_image_dir();
// The directory of `--image ARG`: a bare name (no '/', e.g. "bpo") is an image in the cache,
// $HVTRACE_CACHE/guest/NAME, as `guest/build-image --image NAME` builds it; anything else
// (./bpo, /some/dir) is a directory path.
[[nodiscard]] fs::path image_dir(std::string_view name_or_dir);
[[nodiscard]] Result<GuestImage> load_image(const fs::path& dir);

// A QEMU TCG plugin and its arguments: -plugin <path>,<arg>,<arg>...
struct PluginSpec {
  fs::path path;
  std::vector<std::string> args;  // each "key=value"
};

struct VmConfig {
  std::string name = "default";               // [A-Za-z0-9_-]{1,32}
  unsigned smp = 1;
  unsigned memory_mib = 256;
  std::string cpu = "qemu64,+rdrand";         // "max" gives 5-level paging (LA57)
  std::uint16_t ssh_port = 0;                 // 0: pick a free port on 127.0.0.1
  std::optional<PluginSpec> plugin;
  std::vector<std::string> kernel_args;       // appended to the kernel command line ("pti=on", "nokaslr")
  std::vector<std::string> extra_qemu_args;
  // Networking is QEMU user mode with restrict=on: the guest reaches nothing outside (see
  // guestfwd.hpp). These are the only exceptions: guest address:port -> a server on our loopback.
  std::vector<GuestForward> guest_forwards;
  // The hvtrace binary QEMU runs per forwarded connection (`<it> vm relay ADDR PORT`); needed
  // when guest_forwards is not empty (the CLI sets its own executable).
  fs::path relay_program;
  unsigned tcg_tb_size_mib = 0;               // TCG translation-cache size (0: QEMU's default, up to 1 GiB)
  GuestImage image;
  std::chrono::seconds boot_timeout{180};
};

// What a running VM looks like from outside; persisted as <run_dir>/vm.json.
struct VmRecord {
  std::string name;
  pid_t owner_pid = 0;      // the process that owns the Vm object (supervisor of `vm up`)
  pid_t qemu_pid = 0;
  std::uint16_t ssh_port = 0;
  unsigned smp = 1;
  unsigned memory_mib = 256;
  std::string cpu;
  fs::path run_dir;         // owner-only directory holding everything below
  fs::path ram_path;        // guest RAM, memory-backend-file share=on; offset == guest physical address
  fs::path qmp_path;        // QMP unix socket
  fs::path serial_log;      // guest serial console
  fs::path ssh_key;
  std::string kernel_release;
  double boot_seconds = 0;  // QEMU start -> SSH answers
  std::string plugin;       // "-plugin" argument as given to QEMU, empty if none
  std::vector<std::string> guest_forwards;  // guest_forward_spec() of each forward out of the guest
};

struct ExecResult {
  int exit_status = -1;     // the remote command's exit status
  std::string out;
  std::string err;
};

// Progress lines for a person ("booting", "waiting for SSH"...). May be empty.
using Progress = std::function<void(std::string_view)>;

class Vm {
 public:
  // Launch QEMU and wait until the guest's SSH server answers. On failure nothing is left behind
  // and the error carries the tail of the serial log.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> start(VmConfig config, const Progress& progress = {});
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  [[nodiscard]] const VmRecord& record() const { return record_; }
  [[nodiscard]] Result<ExecResult> exec(std::string_view command,
                                        std::chrono::seconds timeout = std::chrono::seconds{60}) const;
  // Write `bytes` to `path` in the guest, through the SSH session's stdin (a command line, and so
  // a here-document in one, is cut off at about 8.9 KB by the guest's SSH server).
  [[nodiscard]] Result<void> put_file(std::string_view path, std::string_view bytes) const;
  // Is the QEMU process still alive? Reaps it if it exited.
  [[nodiscard]] bool running();
  // Block until QEMU exits or `deadline` passes (or a termination signal arrives); true if it exited.
  bool wait_exit(std::chrono::milliseconds deadline);
  // Clean shutdown: poweroff in the guest, then QMP quit, then SIGTERM, then SIGKILL. Always
  // removes the run directory.
  Result<void> shutdown(std::chrono::seconds timeout = std::chrono::seconds{20});
  // The QEMU process's exit description after it ended ("exited with 1", "killed by signal 9").
  [[nodiscard]] const std::string& exit_reason() const { return exit_reason_; }

 private:
  Vm() = default;
  void cleanup_files();
  VmRecord record_;
  VmConfig config_;
  bool reaped_ = false;
  std::string exit_reason_;
};

// Where the hvtrace monitor of VM `name` keeps its rings file and control socket: in the VM's run
// directory, so they are removed with it. The one place that convention is spelled.
struct MonitorFiles {
  fs::path rings;    // shm=
  fs::path control;  // ctl=
};
[[nodiscard]] MonitorFiles monitor_files(std::string_view name);
// The monitor plugin at `so` for VM `name`: shm= and ctl= from monitor_files(), then `extra_args`.
[[nodiscard]] PluginSpec monitor_plugin(const fs::path& so, std::string_view name,
                                        std::vector<std::string> extra_args = {});

// Root of all run directories: $HVTRACE_RUN_DIR or /dev/shm/hvtrace (tmpfs: the RAM file is memory).
[[nodiscard]] fs::path run_root();
[[nodiscard]] Result<void> validate_name(std::string_view name);

// Attach to a VM started by another process. Fails if no such VM, or if its owner is gone (the
// stale directory is then removed).
[[nodiscard]] Result<VmRecord> find_vm(std::string_view name);
[[nodiscard]] std::vector<VmRecord> list_vms();
// The record as one line of JSON (the schema of vm.json).
[[nodiscard]] std::string record_to_json(const VmRecord& vm);

// Notices, from another process, that a VM's QEMU has gone: the consumers of its events (events,
// trace, session) call alive() from their loops and stop with stopped_message() instead of
// waiting for events that will never come. Dead means: no such process, a zombie, or the pid now
// belongs to another process (its start time changed).
class VmWatch {
 public:
  explicit VmWatch(const VmRecord& vm, std::chrono::milliseconds interval = std::chrono::milliseconds{200});
  // True while QEMU runs. Looks at /proc at most once per `interval`, so a consumer may call it
  // on every loop iteration; once false, stays false.
  [[nodiscard]] bool alive();
  // "VM 'lab' stopped (QEMU pid 1234 exited)"
  [[nodiscard]] std::string stopped_message() const;

 private:
  std::string name_;
  pid_t qemu_pid_;
  std::string start_time_;  // field 22 of /proc/<pid>/stat when the watch began; empty if gone
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point next_check_{};
  bool alive_ = true;
};

// Start a VM owned by a detached supervisor process that outlives the caller (`hvtrace vm up`).
// The supervisor shuts the VM down cleanly on SIGTERM/SIGINT and removes everything when QEMU
// exits for any reason. Returns once the guest answers SSH, or with the boot error.
[[nodiscard]] Result<VmRecord> start_detached(VmConfig config, const Progress& progress = {});
// The one-line protocol between a detached supervisor (start_detached's, `hvtrace farm up`'s) and
// the command that started it, over a pipe: 'P' progress, 'E' error, 'R' ready.
void report_to_starter(int fd, char kind, std::string_view message);
// The starter's side: progress lines go to `progress` until 'R' (ready) or 'E' / the pipe closing
// (the error). A termination request SIGTERMs the supervisor `pid`. Does not close `fd`.
[[nodiscard]] Result<void> wait_for_supervisor(int fd, pid_t pid, const Progress& progress);
// Ask the owner of a VM to shut it down and wait until its run directory is gone.
[[nodiscard]] Result<void> stop_vm(const VmRecord& vm, std::chrono::seconds timeout = std::chrono::seconds{30});

// Run a command in a VM over SSH (Debian's OpenSSH client, the image's key; root or "alice").
[[nodiscard]] Result<ExecResult> ssh_exec(const VmRecord& vm, std::string_view command,
                                          std::chrono::seconds timeout, std::string_view user = "root");
// The same for a cleanup that must still run after Ctrl-C (ssh_exec gives up at once then).
[[nodiscard]] Result<ExecResult> ssh_exec_cleanup(const VmRecord& vm, std::string_view command,
                                                  std::chrono::seconds timeout);

// Quoting for the guest's POSIX shell (sh, bash): a word in single quotes, each ' written as '\''.
// Words made only of characters no shell treats specially are left bare, for readable logs.
[[nodiscard]] std::string shell_quote(std::string_view word);
[[nodiscard]] std::string shell_quote_argv(const std::vector<std::string>& argv);
// The command line a `-- CMD...` argument list means in the guest (`vm exec`, `trace`), as with
// docker exec: several arguments are one program and its arguments, quoted so the guest runs
// exactly that argv; a single argument is a shell command line, run as given ('echo $HOME; exit 3').
[[nodiscard]] std::string remote_command_line(const std::vector<std::string>& argv);

// Run `command` in a VM over SSH for a person at a terminal or in a pipeline: the command's stdout
// and stderr go straight to ours as they arrive, and with `pass_stdin` it reads our stdin (its EOF
// ends theirs); otherwise it reads /dev/null. Returns the command's exit status.
[[nodiscard]] Result<int> ssh_run(const VmRecord& vm, std::string_view command, std::chrono::seconds timeout,
                                  bool pass_stdin, std::string_view user = "root");

// Send one QMP command and return its "return" member as JSON text.
[[nodiscard]] Result<std::string> qmp_command(const fs::path& socket, std::string_view command_json,
                                              std::chrono::milliseconds timeout = std::chrono::milliseconds{5000});

// Process-wide flag set by SIGINT/SIGTERM handlers installed with install_termination_handlers();
// long waits in the library poll it and return an "interrupted" error so RAII can clean up.
// A polite shutdown after a first signal clears the flag, so a second signal cuts it short.
void install_termination_handlers();
[[nodiscard]] bool termination_requested();
void clear_termination_request();

}  // namespace hvtrace::vm
