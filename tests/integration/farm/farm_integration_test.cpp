// hvtrace farm end to end on the real default guest (see CMakeLists.txt for what is covered).
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <thread>

namespace {

using namespace std::chrono_literals;
using hvtrace::vm::ProcessResult;
using hvtrace::vm::run_process;
namespace fs = std::filesystem;

constexpr const char* kFarm = "itest-farm";
const fs::path kAttacker = fs::path(HVTRACE_SOURCE_DIR) / "scripts" / "attacker";

ProcessResult cli(const std::vector<std::string>& args, std::chrono::seconds timeout = 300s) {
  std::vector<std::string> argv = {HVTRACE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_process(argv, timeout);
  if (!r) return ProcessResult{-1, "", r.error().message};
  return std::move(r).value();
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A socket bound to 127.0.0.1:port (0: any); -1 if taken.
int bind_port(std::uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 1) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Two consecutive free high ports.
std::uint16_t free_pair() {
  for (unsigned base = 20000 + static_cast<unsigned>(getpid() % 20000); base < 60000; base += 7) {
    const int a = bind_port(static_cast<std::uint16_t>(base)), b = bind_port(static_cast<std::uint16_t>(base + 1));
    if (a >= 0) close(a);
    if (b >= 0) close(b);
    if (a >= 0 && b >= 0) return static_cast<std::uint16_t>(base);
  }
  return 0;
}

// Running and not a zombie (an exited supervisor waits for its new parent to reap it).
bool pid_alive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  const std::string stat = slurp(fmt::format("/proc/{}/stat", pid));
  const auto p = stat.rfind(')');
  return p == std::string::npos || p + 2 >= stat.size() || stat[p + 2] != 'Z';
}

// Bad input: a clear error, exit 2, nothing started.
TEST(FarmBadInput, RefusedBeforeAnythingStarts) {
  const auto expect_error = [](const std::vector<std::string>& args, const std::string& needle) {
    auto r = cli(args, 60s);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  expect_error({"farm", "up", "--name", "itest-farm-bad", "--vms", "2", "--ssh-ports", "41000"}, "1 port(s) for 2 VMs");
  expect_error({"farm", "up", "--name", "itest-farm-bad", "--vms", "2", "--ssh-ports", "41000-x"}, "expected PORT or FIRST-LAST");
  expect_error({"farm", "up", "--name", "itest-farm-bad", "--vms", "2", "--ssh-ports", "41001-41000"}, "below the first");
  expect_error({"farm", "up", "--name", "itest-farm-bad", "--vms", "1000", "--ssh-ports", "40000-40999"}, "use fewer --vms");
  const std::uint16_t base = free_pair();
  ASSERT_NE(base, 0);
  const int taken = bind_port(static_cast<std::uint16_t>(base + 1));
  ASSERT_GE(taken, 0);
  expect_error({"farm", "up", "--name", "itest-farm-bad", "--vms", "2", "--ssh-ports", fmt::format("{}-{}", base, base + 1)},
               "is not available");
  close(taken);
  expect_error({"farm", "status", "--name", "itest-farm-none"}, "no farm 'itest-farm-none' is running");
  expect_error({"farm", "down", "--name", "itest-farm-none"}, "no farm 'itest-farm-none' is running");
  EXPECT_FALSE(fs::exists(hvtrace::vm::run_root() / "farm.itest-farm-bad"));
  EXPECT_FALSE(fs::exists(hvtrace::vm::run_root() / "itest-farm-bad-0"));
}

class Farm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    work_ = fs::temp_directory_path() / fmt::format("hvtrace-farm-test-{}", getpid());
    fs::create_directories(work_);
    base_ = free_pair();
    ASSERT_NE(base_, 0);
    auto r = cli({"farm", "up", "--name", kFarm, "--vms", "2", "--ssh-ports", fmt::format("{}-{}", base_, base_ + 1), "-o",
                  (work_ / "out").string(), "--sensor", "itest"},
                 600s);
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_NE(r.err.find("ready on 127.0.0.1:"), std::string::npos) << r.err;  // progress while booting
    up_ = true;
  }
  static void TearDownTestSuite() {
    if (up_) (void)cli({"farm", "down", "--name", kFarm}, 120s);
    if (!work_.empty() && std::getenv("HVTRACE_KEEP") == nullptr) fs::remove_all(work_);
  }
  void SetUp() override {
    if (!up_) GTEST_SKIP() << "the farm did not come up";
  }

  static nlohmann::json status() {
    auto r = cli({"farm", "status", "--name", kFarm, "--json"}, 30s);
    if (r.exit_code != 0) return {};
    return nlohmann::json::parse(r.out, nullptr, false);
  }
  // Wait until `pred` holds for the status (bounded).
  static nlohmann::json wait_status(const std::function<bool(const nlohmann::json&)>& pred, std::chrono::seconds limit) {
    nlohmann::json s;
    for (const auto end = std::chrono::steady_clock::now() + limit; std::chrono::steady_clock::now() < end;) {
      s = status();
      if (s.is_object() && pred(s)) return s;
      std::this_thread::sleep_for(200ms);
    }
    ADD_FAILURE() << "farm status never reached the expected state; last: " << s.dump();
    return s;
  }
  static ProcessResult attack(std::uint16_t port, const std::string& name, const std::string& script, const fs::path& screen) {
    const fs::path file = work_ / (name + ".session");
    std::ofstream(file) << script;
    auto r = run_process({"python3", kAttacker.string(), "--port", std::to_string(port), "--delay", "5-20", "--seed", "1",
                          "--screen", screen.string(), "-q", file.string()},
                         300s);
    if (!r) return ProcessResult{-1, "", r.error().message};
    return std::move(r).value();
  }

  static fs::path work_;
  static std::uint16_t base_;
  static bool up_;
};
fs::path Farm::work_;
std::uint16_t Farm::base_ = 0;
bool Farm::up_ = false;

TEST_F(Farm, StatusShowsEveryVmReady) {
  const auto s = wait_status([](const nlohmann::json& j) { return j["vms"].size() == 2 && j["vms"][1]["state"] == "ready"; }, 30s);
  ASSERT_EQ(s["vms"].size(), 2u);
  EXPECT_EQ(s["vms"][0]["name"], "itest-farm-0");
  EXPECT_EQ(s["vms"][0]["port"], base_);
  EXPECT_EQ(s["vms"][1]["port"], base_ + 1);
  EXPECT_EQ(s["vms"][0]["state"], "ready");
  EXPECT_EQ(s["sensor"], "itest");
  auto text = cli({"farm", "status", "--name", kFarm});
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("VM                PORT STATE"), std::string::npos) << text.out;
  auto again = cli({"farm", "up", "--name", kFarm, "--vms", "2", "--ssh-ports", fmt::format("{}-{}", base_ + 2, base_ + 3)});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("already up"), std::string::npos) << again.err;
}

TEST_F(Farm, ResetAfterEverySessionWipesTheAttackersFiles) {
  const auto before = status();
  ASSERT_TRUE(before.is_object());
  const auto resets0 = before["vms"][0]["resets"].get<std::uint64_t>();
  auto first = attack(base_, "one", "echo planted > /root/itest-farm-marker\nls /root\n", work_ / "one.screen");
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  EXPECT_NE(slurp(work_ / "one.screen").find("itest-farm-marker"), std::string::npos);
  // The next attacker is served only after the reset.
  wait_status([&](const nlohmann::json& j) { return j["vms"][0]["resets"] == resets0 + 1 && j["vms"][0]["state"] == "ready"; }, 60s);
  auto second = attack(base_, "two", "ls /root/itest-farm-marker || echo GONE-$((40+2))\n", work_ / "two.screen");
  ASSERT_EQ(second.exit_code, 0) << second.out << second.err;
  EXPECT_NE(slurp(work_ / "two.screen").find("GONE-42"), std::string::npos) << slurp(work_ / "two.screen");
  const auto s = wait_status(
      [&](const nlohmann::json& j) { return j["vms"][0]["resets"] == resets0 + 2 && j["vms"][0]["state"] == "ready"; }, 60s);
  EXPECT_GE(s["vms"][0]["sessions"].get<std::uint64_t>(), 2u);
  EXPECT_GT(s["vms"][0]["last_reset_unix"].get<double>(), 0);
  EXPECT_EQ(s["vms"][1]["sessions"], 0);
  // Each session's records are in the farm's output dir, with the typed commands.
  std::string all_events;
  int sessions = 0;
  for (const auto& e : fs::directory_iterator(work_ / "out"))
    if (e.is_directory() && fs::exists(e.path() / "events.jsonl")) {
      ++sessions;
      all_events += slurp(e.path() / "events.jsonl");
    }
  EXPECT_GE(sessions, 2);
  EXPECT_NE(all_events.find("itest-farm-marker"), std::string::npos);
  EXPECT_NE(all_events.find("\"sensor\":\"itest\""), std::string::npos);
  const std::string log = slurp(work_ / "out" / "farm.jsonl");
  EXPECT_NE(log.find("\"event\":\"reset\""), std::string::npos) << log;
}

TEST_F(Farm, KilledQemuIsReplacedAndRecorded) {
  const auto before = status();
  ASSERT_TRUE(before.is_object());
  const pid_t qemu = before["vms"][1]["qemu_pid"].get<pid_t>();
  ASSERT_TRUE(pid_alive(qemu));
  ASSERT_EQ(kill(qemu, SIGKILL), 0);
  const auto s = wait_status(
      [&](const nlohmann::json& j) {
        return j["vms"][1]["replaced"] == 1 && j["vms"][1]["state"] == "ready" && j["vms"][1]["qemu_pid"] != qemu;
      },
      240s);
  EXPECT_NE(slurp(work_ / "out" / "farm.jsonl").find("\"event\":\"vm_replaced\""), std::string::npos);
  // The replacement serves attackers.
  auto r = attack(base_ + 1, "three", "echo replaced-$((1+1))\n", work_ / "three.screen");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(slurp(work_ / "three.screen").find("replaced-2"), std::string::npos);
}

TEST_F(Farm, DownLeavesOnlyTheSessionRecords) {
  const auto s = status();
  ASSERT_TRUE(s.is_object());
  std::vector<pid_t> pids = {s["supervisor_pid"].get<pid_t>()};
  for (const auto& v : s["vms"]) pids.push_back(v["qemu_pid"].get<pid_t>());
  auto r = cli({"farm", "down", "--name", kFarm}, 120s);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  up_ = false;
  for (pid_t p : pids) {
    for (int i = 0; i < 50 && pid_alive(p); ++i) std::this_thread::sleep_for(100ms);  // bounded: exit is under way
    EXPECT_FALSE(pid_alive(p)) << "pid " << p << " still runs: " << slurp(fmt::format("/proc/{}/cmdline", p));
  }
  EXPECT_FALSE(fs::exists(hvtrace::vm::run_root() / "farm.itest-farm"));
  EXPECT_FALSE(fs::exists(hvtrace::vm::run_root() / "itest-farm-0"));
  EXPECT_FALSE(fs::exists(hvtrace::vm::run_root() / "itest-farm-1"));
  EXPECT_TRUE(fs::exists(work_ / "out" / "farm.jsonl"));
  auto st = cli({"farm", "status", "--name", kFarm});
  EXPECT_EQ(st.exit_code, 2);
}

}  // namespace
