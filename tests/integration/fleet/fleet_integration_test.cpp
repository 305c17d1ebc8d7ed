// Issue 11's headline test, against real processes only: a 3-node nats-server cluster on loopback
// (JetStream, stream replicas 3), `hvtrace farm up --vms 2 --publish` (all three URLs),
// scripts/attacker logged into both guests through the farm's public ports at the same time (a
// wrong password, then the right one, a few commands), one NATS node SIGKILLed while the sessions
// run and restarted, `hvtrace collect` SIGKILLed once it has written part and started again with
// the same --durable. Then: every event of both sessions arrived exactly once and in order
// (events.jsonl compared line by line), the collected folders equal the farm's local ones byte for
// byte, each watcher's publisher dropped nothing and left nothing in its spool, and
// `farm down` leaves none of the processes running.
#include "publish/local_nats.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>
#include <nats/nats.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

namespace hvtrace::publish {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr const char* kFarm = "itest-fleet";
constexpr const char* kDurable = "itest-fleet-durable";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> lines_of(const fs::path& p) {
  std::vector<std::string> out;
  std::istringstream in(slurp(p));
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// hvtrace ARGS, output captured.
vm::ProcessResult hvtrace(std::vector<std::string> args, std::chrono::seconds limit) {
  args.insert(args.begin(), HVTRACE_BIN);
  auto r = vm::run_process(args, limit);
  return r ? std::move(r).value() : vm::ProcessResult{-1, "", r.error().message};
}

json farm_status() {
  const auto r = hvtrace({"farm", "status", "--name", kFarm, "--json"}, 30s);
  return r.exit_code == 0 ? json::parse(r.out, nullptr, false) : json();
}

// A process that exists and is not a zombie.
bool running(pid_t pid) {
  std::ifstream st(fmt::format("/proc/{}/status", pid));
  for (std::string l; std::getline(st, l);)
    if (l.rfind("State:", 0) == 0) return l.find('Z') == std::string::npos;
  return false;
}

// Session folders (12 hex digits) under dir.
std::vector<std::string> session_ids(const fs::path& dir) {
  std::vector<std::string> ids;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && std::regex_match(e.path().filename().string(), std::regex("[0-9a-f]{12}"))) ids.push_back(e.path().filename());
  std::sort(ids.begin(), ids.end());
  return ids;
}

TEST(Fleet, TwoFarmVmsPublishThroughANodeAndCollectorRestartEveryEventOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path work = fs::temp_directory_path() / fmt::format("itest-fleet-{}", ::getpid());
  fs::remove_all(work);
  fs::create_directories(work);
  const fs::path local = work / "farm-out", got = work / "collected", clog = work / "collect.log";

  LocalNats nats(work, 3, "itest-fleet-nats");
  nats.start();
  const int port = free_loopback_range(2);
  auto up = hvtrace({"farm", "up", "--vms", "2", "--ssh-ports", fmt::format("{}-{}", port, port + 1), "--name", kFarm, "--publish",
                     nats.urls(), "-o", local.string()},
                    300s);
  ASSERT_EQ(up.exit_code, 0) << up.out << up.err;
  std::cerr << fmt::format("[fleet] farm up in {:.1f} s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  const json before = farm_status();
  ASSERT_TRUE(before.is_object() && before["vms"].size() == 2) << before.dump();
  std::vector<pid_t> farm_pids = {before["supervisor_pid"].get<pid_t>()};
  for (const auto& v : before["vms"]) farm_pids.push_back(v["qemu_pid"].get<pid_t>());
  pid_t col = -1;
  struct Cleanup {   // when an assertion ends the test early: the collector, then farm down
    pid_t& col;
    bool done = false;
    ~Cleanup() {
      if (col > 0 && wait_exit(col, 0ms) < 0) {
        ::kill(col, SIGKILL);
        wait_exit(col, 5s);
      }
      if (!done) (void)hvtrace({"farm", "down", "--name", kFarm}, 120s);
    }
  } down{col};

  col = spawn_logged({HVTRACE_BIN, "collect", "--from", nats.urls(), "-o", got.string(), "--durable", kDurable}, clog);
  ASSERT_GT(col, 0);

  // Both attackers at once, each through its own farm port.
  std::vector<vm::ProcessResult> attacks(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    const fs::path script = work / fmt::format("attack-{}.session", i);
    std::ofstream(script) << fmt::format(
        "!wrong-password letmein{0}\n"
        "echo fleet-$((40+{0}))-in\n"
        "!sleep 2\n"
        "uname -a\n"
        "echo during-outage-{0} > /tmp/fleet.txt\n"
        "cat /tmp/fleet.txt; ls -la /etc | head -5\n"
        "!sleep 2\n"
        "echo fleet-{0}-done\n"
        "exit\n",
        i);
    threads.emplace_back([&, i, script] {
      auto r = vm::run_process({"python3", (fs::path(HVTRACE_SOURCE_DIR) / "scripts" / "attacker").string(), "--port",
                                std::to_string(port + i), "--delay", "5-20", "--seed", std::to_string(i + 1), "--screen",
                                (work / fmt::format("screen-{}", i)).string(), "-q", script.string()},
                               180s);
      attacks[static_cast<std::size_t>(i)] = r ? std::move(r).value() : vm::ProcessResult{-1, "", r.error().message};
    });
  }
  const auto wait_for = [](auto pred, std::chrono::seconds limit) {
    for (const auto end = std::chrono::steady_clock::now() + limit; std::chrono::steady_clock::now() < end;
         std::this_thread::sleep_for(100ms))
      if (pred()) return true;
    return false;
  };
  // Both logged in and typing: a NATS node dies under the sessions (node 0: the first URL every
  // client was given), the collector dies once it has written part of them, the node comes back.
  EXPECT_TRUE(wait_for(
      [&] { return slurp(work / "screen-0").find("fleet-40-in") != std::string::npos && slurp(work / "screen-1").find("fleet-41-in") != std::string::npos; },
      120s));
  nats.kill(0, SIGKILL);
  const auto collected_bytes = [&] {
    std::uintmax_t n = 0;
    std::error_code ec;
    if (fs::exists(got))
      for (const auto& id : session_ids(got)) n += fs::file_size(got / id / "events.jsonl", ec) * !ec;
    return n;
  };
  EXPECT_TRUE(wait_for([&] { return collected_bytes() > 0; }, 30s)) << slurp(clog);
  ::kill(col, SIGKILL);
  EXPECT_EQ(wait_exit(col, 10s), 128 + SIGKILL);
  col = -1;   // reaped: Cleanup must not signal a reused pid
  const auto collected_before_restart = collected_bytes();
  std::this_thread::sleep_for(1500ms);
  nats.start(0);
  for (auto& th : threads) th.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(attacks[static_cast<std::size_t>(i)].exit_code, 0) << attacks[static_cast<std::size_t>(i)].err;
    EXPECT_NE(slurp(work / fmt::format("screen-{}", i)).find(fmt::format("fleet-{}-done", i)), std::string::npos);
  }

  // Each watcher has ended (its publisher closed: everything acknowledged or spooled) once its VM
  // was reset.
  json st;
  EXPECT_TRUE(wait_for(
      [&] {
        st = farm_status();
        if (!st.is_object()) return false;
        for (const auto& v : st["vms"])
          if (v["sessions"] != 1 || v["resets"] != 1 || v["state"] != "ready") return false;
        return true;
      },
      60s))
      << st.dump();

  col = spawn_logged({HVTRACE_BIN, "collect", "--from", nats.urls(), "-o", got.string(), "--durable", kDurable, "--idle-exit", "3"}, clog);
  ASSERT_GT(col, 0);
  const int rc = wait_exit(col, 90s);
  if (rc < 0) {
    ::kill(col, SIGKILL);
    wait_exit(col, 5s);
  }
  col = -1;
  EXPECT_EQ(rc, 0) << slurp(clog);

  // Exactly the two sessions, one per VM, each with the failed and the good login.
  const auto ids = session_ids(local);
  ASSERT_EQ(ids.size(), 2u) << "sessions in " << local;
  EXPECT_EQ(session_ids(got), ids);
  std::set<std::string> vms_seen;
  for (const auto& id : ids) {
    const auto want = lines_of(local / id / "events.jsonl"), have = lines_of(got / id / "events.jsonl");
    const std::string all = slurp(local / id / "events.jsonl");
    EXPECT_NE(all.find("cowrie.login.failed"), std::string::npos) << id;
    EXPECT_NE(all.find("cowrie.login.success"), std::string::npos) << id;
    EXPECT_NE(all.find("during-outage-"), std::string::npos) << id;
    vms_seen.insert(json::parse(want.at(0))["sensor"].get<std::string>());
    EXPECT_GE(want.size(), 10u) << id;
    EXPECT_EQ(have.size(), want.size()) << id << ": events collected vs written by the farm's watcher";
    for (std::size_t l = 0; l < std::min(want.size(), have.size()); ++l)
      if (have[l] != want[l]) {
        ADD_FAILURE() << id << "/events.jsonl line " << l + 1 << " differs:\n  farm:      " << want[l] << "\n  collected: " << have[l];
        break;
      }
    for (const char* f : {"events.jsonl", "transcript.txt", "session.cast"}) {
      ASSERT_TRUE(fs::exists(local / id / f)) << id << "/" << f;
      ASSERT_TRUE(fs::exists(got / id / f)) << id << "/" << f << " was not collected";
      EXPECT_TRUE(slurp(local / id / f) == slurp(got / id / f)) << id << "/" << f << " differs";
    }
  }
  EXPECT_EQ(vms_seen, (std::set<std::string>{"itest-fleet-0", "itest-fleet-1"}));   // the default sensor: the VM's name

  // Nothing dropped or left behind by either VM's publisher; both spools empty.
  int ends = 0;
  std::uint64_t published = 0;
  for (const auto& l : lines_of(local / "farm.jsonl")) {
    const json e = json::parse(l, nullptr, false);
    if (!e.is_object() || e.value("event", "") != "session_end") continue;
    ++ends;
    const std::string pub = e.value("publish", "");
    EXPECT_NE(pub.find("dropped 0; left in the spool: 0 (0 bytes)"), std::string::npos) << l;
    EXPECT_EQ(pub.find("published: 0 events"), std::string::npos) << l;
    std::smatch m;
    if (std::regex_search(pub, m, std::regex(R"(published: (\d+) events \+ (\d+) file chunks)")))
      published += std::stoull(m[1]) + std::stoull(m[2]);
  }
  // The stream: replicated on the three nodes, and each message in it once (the retried batches
  // were de-duplicated by their Nats-Msg-Id): as many as the two publishers sent.
  {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;
    jsStreamInfo* si = nullptr;
    ASSERT_EQ(natsConnection_ConnectTo(&nc, nats.urls().c_str()), NATS_OK);
    EXPECT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
    EXPECT_EQ(js_GetStreamInfo(&si, js, "HVTRACE", nullptr, nullptr), NATS_OK) << nats_GetLastError(nullptr);
    if (si != nullptr) {
      EXPECT_EQ(si->Config->Replicas, 3);
      EXPECT_EQ(si->State.Msgs, published);
      jsStreamInfo_Destroy(si);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  EXPECT_EQ(ends, 2) << slurp(local / "farm.jsonl");
  for (const char* vmname : {"itest-fleet-0", "itest-fleet-1"}) {
    const fs::path spool = local / (std::string(".publish-spool-") + vmname) / "spool.log";
    ASSERT_TRUE(fs::exists(spool)) << spool;
    EXPECT_EQ(fs::file_size(spool), 0u) << spool;
  }
  for (const auto& v : st["vms"])   // the monitor's own losses (events.jsonl equal either way): for the log
    std::cerr << fmt::format("[fleet] {}: lost events {}, sync waits timed out {}\n", v["name"].get<std::string>(),
                             v["lost_events"].get<std::uint64_t>(), v["sync_timeouts"].get<std::uint64_t>());
  EXPECT_GT(collected_before_restart, 0u);
  std::cerr << slurp(clog);

  // farm down: the supervisor and both QEMUs gone; the NATS nodes are stopped by `nats`.
  const auto dr = hvtrace({"farm", "down", "--name", kFarm}, 120s);
  down.done = true;
  EXPECT_EQ(dr.exit_code, 0) << dr.out << dr.err;
  for (pid_t p : farm_pids) {
    wait_for([&] { return !running(p); }, 5s);
    EXPECT_FALSE(running(p)) << "pid " << p << " still runs: " << slurp(fmt::format("/proc/{}/cmdline", p));
  }
  EXPECT_FALSE(fs::exists(vm::run_root() / (std::string("farm.") + kFarm)));
  std::cerr << fmt::format("[fleet] {:.1f} s in all\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (!::testing::Test::HasFailure() && std::getenv("HVTRACE_KEEP") == nullptr) fs::remove_all(work);
}

}  // namespace
}  // namespace hvtrace::publish
