// End to end with a real guest: `hvtrace session --publish` on a VM named itest-nats-vm while
// scripts/attacker logs in over SSH (a wrong password, then the right one, a few commands), a
// nats-server with JetStream on loopback, then `hvtrace collect`: the collected session folders
// equal the ones `hvtrace session -o` wrote locally.
#include "publish/local_nats.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <fmt/core.h>

#include <fstream>
#include <iostream>
#include <regex>
#include <thread>

namespace hvtrace::publish {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(PublishGuest, CollectedSessionsEqualTheLocalOnes) {
  const fs::path work = fs::temp_directory_path() / fmt::format("itest-nats-guest-{}", ::getpid());
  fs::remove_all(work);
  fs::create_directories(work);
  auto img = vm::load_image(vm::image_dir("default"));
  ASSERT_TRUE(img.ok()) << img.error().message;
  vm::VmConfig c;
  c.name = "itest-nats-vm";
  c.image = std::move(img).value();
  c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, c.name, {});
  auto started = vm::Vm::start(c);
  ASSERT_TRUE(started.ok()) << started.error().message;
  auto guest = std::move(started).value();

  LocalNats nats(work, 1, "itest-nats");
  nats.start();
  const fs::path local = work / "local", got = work / "collected", log = work / "session.log";
  const pid_t hv = spawn_logged({HVTRACE_BIN, "session", "--vm", "itest-nats-vm", "-o", local.string(), "--publish", nats.urls()}, log);
  ASSERT_GT(hv, 0);
  const auto ready_by = std::chrono::steady_clock::now() + 180s;
  while (slurp(log).find("hvtrace: watching ") == std::string::npos && std::chrono::steady_clock::now() < ready_by &&
         wait_exit(hv, 0ms) < 0)
    std::this_thread::sleep_for(100ms);
  ASSERT_NE(slurp(log).find("hvtrace: watching "), std::string::npos) << slurp(log);

  const fs::path script = work / "attack.session";
  std::ofstream(script) << "!wrong-password letmein123\n"
                           "uname -a\n"
                           "echo hello world | tr a-z A-Z\n"
                           "ls -la /etc | head -20\n"
                           "echo written > /tmp/itest-nats.txt\n"
                           "exit\n";
  auto r = vm::run_process({"python3", (fs::path(HVTRACE_SOURCE_DIR) / "scripts" / "attacker").string(), "--port",
                            std::to_string(guest->record().ssh_port), "--delay", "5-30", "--seed", "1", "-q", script.string()},
                           300s);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 0) << r->err;
  std::this_thread::sleep_for(2s);   // the last events reach the rings
  ::kill(hv, SIGINT);
  EXPECT_EQ(wait_exit(hv, 60s), 0) << slurp(log);
  const std::string out = slurp(log);
  EXPECT_NE(out.find("left in the spool: 0 (0 bytes)"), std::string::npos) << out;
  EXPECT_NE(out.find("dropped 0;"), std::string::npos) << out;

  const pid_t col = spawn_logged({HVTRACE_BIN, "collect", "--from", nats.urls(), "-o", got.string(), "--idle-exit", "3"}, work / "collect.log");
  EXPECT_EQ(wait_exit(col, 60s), 0) << slurp(work / "collect.log");

  int sessions = 0;
  for (const auto& e : fs::directory_iterator(local)) {
    if (!std::regex_match(e.path().filename().string(), std::regex("[0-9a-f]{12}"))) continue;
    ++sessions;
    EXPECT_FALSE(slurp(e.path() / "events.jsonl").empty()) << e.path();
    for (const char* f : {"events.jsonl", "transcript.txt", "session.cast"}) {
      const fs::path a = e.path() / f, b = got / e.path().filename() / f;
      if (!fs::exists(a)) continue;
      ASSERT_TRUE(fs::exists(b)) << b;
      EXPECT_TRUE(slurp(a) == slurp(b)) << f << " of " << e.path().filename() << " differs";
    }
  }
  EXPECT_GE(sessions, 1);
  std::cerr << out << slurp(work / "collect.log");
  (void)guest->shutdown();
  if (!::testing::Test::HasFailure()) fs::remove_all(work);
}

}  // namespace
}  // namespace hvtrace::publish
