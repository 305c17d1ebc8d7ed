#include "farm/snapshot.hpp"

#include "vm/process.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <thread>

namespace hvtrace::farm {

namespace {
using Clock = std::chrono::steady_clock;
constexpr const char* kNode = "hvtrace-vmstate";
constexpr const char* kTag = "clean";

// Run a snapshot job and wait until it concludes (query-jobs polled: QMP serves one client at a
// time, so no connection is held open across the job); its error, if any, is the result.
Result<double> run_job(const vm::VmRecord& vm, std::string_view command, std::chrono::seconds timeout) {
  static std::atomic<unsigned> seq{0};
  const std::string id = fmt::format("hvtrace-{}-{}", command, seq++);
  const auto t0 = Clock::now();
  const nlohmann::json cmd = {{"execute", command},
                              {"arguments", {{"job-id", id}, {"tag", kTag}, {"vmstate", kNode}, {"devices", {kNode}}}}};
  if (auto r = vm::qmp_command(vm.qmp_path, cmd.dump()); !r)
    return make_error("{} of VM '{}': {}", command, vm.name, r.error().message);
  const auto deadline = t0 + timeout;
  while (true) {
    auto jobs = vm::qmp_command(vm.qmp_path, R"({"execute":"query-jobs"})");
    if (!jobs) return make_error("{} of VM '{}': {}", command, vm.name, jobs.error().message);
    const auto j = nlohmann::json::parse(*jobs, nullptr, false);
    for (const auto& job : j.is_array() ? j : nlohmann::json::array()) {
      if (job.value("id", "") != id || job.value("status", "") != "concluded") continue;
      const double took = std::chrono::duration<double>(Clock::now() - t0).count();
      (void)vm::qmp_command(vm.qmp_path, nlohmann::json{{"execute", "job-dismiss"}, {"arguments", {{"id", id}}}}.dump());
      if (job.contains("error")) return make_error("{} of VM '{}' failed: {}", command, vm.name, job["error"].get<std::string>());
      return took;
    }
    if (Clock::now() > deadline) return make_error("{} of VM '{}' did not finish within {} s", command, vm.name, timeout.count());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}
}  // namespace

Result<void> snapshot_prepare(const vm::VmRecord& vm) {
  const auto file = vm.run_dir / "vmstate.qcow2";
  auto r = vm::run_process({"qemu-img", "create", "-q", "-f", "qcow2", file.string(), "4G"}, std::chrono::seconds{30});
  if (!r) return make_error("qemu-img (qemu-utils; run scripts/setup): {}", r.error().message);
  if (r->exit_code != 0) return make_error("qemu-img create {} failed: {}", file.string(), r->err);
  const nlohmann::json add = {{"execute", "blockdev-add"},
                              {"arguments",
                               {{"driver", "qcow2"}, {"node-name", kNode}, {"file", {{"driver", "file"}, {"filename", file.string()}}}}}};
  if (auto q = vm::qmp_command(vm.qmp_path, add.dump()); !q)
    return make_error("adding the snapshot file to VM '{}': {}", vm.name, q.error().message);
  return {};
}

Result<double> snapshot_save(const vm::VmRecord& vm, std::chrono::seconds timeout) {
  return run_job(vm, "snapshot-save", timeout);
}

Result<double> snapshot_load(const vm::VmRecord& vm, std::chrono::seconds timeout) {
  return run_job(vm, "snapshot-load", timeout);
}

}  // namespace hvtrace::farm
