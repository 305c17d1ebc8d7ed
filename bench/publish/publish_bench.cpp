// publish_bench [--quick] [--events N] [--rounds N] [--cluster] [--batch N] [--json FILE] [--check-target]
//
// Publishes N Cowrie-style events (about 330 bytes of JSON each, 8 sessions interleaved) through
// hvtrace's Publisher to a fresh JetStream stream on nats-server(s) this program starts on
// loopback (one node, or --cluster: three nodes with replicas 3), and measures per round:
//   throughput   events / (time from the first event() to every message acknowledged, close())
//   caller CPU   CPU time of the calling thread inside event() per event (what hvtrace's event
//                loop pays: serialization + queueing)
//   process CPU  the whole process's CPU (caller, the publisher's I/O thread, nats.c's threads)
//                per event — the publisher's full cost on the host, without nats-server's
// and prints the medians over the rounds (and a JSON object with every round with --json).
// --check-target: exit 3 when the median is below the 10,000 events/s.
#include "publish/local_nats.hpp"
#include "publish/publisher.hpp"

#include <nlohmann/json.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

double thread_cpu() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}
double process_cpu() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, cluster = false, check_target = false;
  std::size_t events = 200000;
  int rounds = 5;
  std::size_t batch = hvtrace::publish::PublisherConfig{}.batch;
  std::string json_out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--check-target") {
      check_target = true;
    } else if (a == "--cluster") {
      cluster = true;
    } else if (a == "--events" && i + 1 < argc) {
      events = std::stoul(argv[++i]);
    } else if (a == "--batch" && i + 1 < argc) {
      batch = std::stoul(argv[++i]);
    } else if (a == "--rounds" && i + 1 < argc) {
      rounds = std::stoi(argv[++i]);
    } else if (a == "--json" && i + 1 < argc) {
      json_out = argv[++i];
    } else {
      fmt::print(stderr, "usage: publish_bench [--quick] [--events N] [--rounds N] [--cluster] [--batch N] [--json FILE] [--check-target]\n");
      return 2;
    }
  }
  if (quick) {
    events = std::min<std::size_t>(events, 20000);
    rounds = std::min(rounds, 3);
  }
  const fs::path root = fs::temp_directory_path() / fmt::format("hvtrace-publish-bench-{}", ::getpid());
  fs::remove_all(root);
  fs::create_directories(root);
  nlohmann::json report = {{"events", events}, {"rounds", nlohmann::json::array()}, {"cluster", cluster}, {"batch", batch}};
  std::vector<double> rate, caller_us, process_us;
  try {
    hvtrace::publish::LocalNats servers(root, cluster ? 3 : 1, "bench-nats");
    servers.start();
    // Pre-built events: the bench measures publishing, not making events.
    std::vector<nlohmann::json> evs;
    for (std::size_t i = 0; i < 4096; ++i)
      evs.push_back({{"eventid", i % 3 ? "cowrie.command.input" : "hvtrace.process.exec"},
                     {"session", fmt::format("{:012x}", 0xabc000 + i % 8)},
                     {"sensor", "bench"},
                     {"src_ip", "10.0.2.2"},
                     {"timestamp", "2026-12-02T04:00:00.123456Z"},
                     {"message", "CMD: ls -la /tmp; uname -a; cat /proc/cpuinfo | grep model | head -1"},
                     {"input", "ls -la /tmp; uname -a; cat /proc/cpuinfo | grep model | head -1"},
                     {"argv", {"/bin/sh", "-c", "ls -la /tmp"}},
                     {"pid", 1234 + i},
                     {"ppid", 1200}});
    for (int r = 0; r < rounds; ++r) {
      hvtrace::publish::PublisherConfig c;
      c.urls = servers.urls();
      c.vm = "bench-vm";
      c.batch = batch;
      c.stream = fmt::format("BENCH{}", r);   // a fresh stream each round; its subjects overlap: drop the last
      c.spool_dir = root / fmt::format("spool{}", r);
      if (r > 0) {
        // Only one stream may take hvtrace.>: a new round reuses the first stream.
        c.stream = "BENCH0";
      }
      hvtrace::publish::Publisher pub(c);
      const double p0 = process_cpu();
      const auto t0 = std::chrono::steady_clock::now();
      // The caller's CPU: the loop with event() minus the same loop without it (clock reads per
      // event would cost as much as what is measured).
      const auto loop = [&](bool publish) {
        const double c0 = thread_cpu();
        for (std::size_t i = 0; i < events; ++i) {
          auto& e = evs[i % evs.size()];
          // A new session every 4096 events so ids never repeat across rounds (dedup would skip them).
          e["session"] = fmt::format("{:06x}{:06x}", r * 1000 + static_cast<int>(i / evs.size()), i % 8);
          if (publish) pub.event(e);
        }
        return thread_cpu() - c0;
      };
      const double caller = loop(true);
      const auto st = pub.close(120s);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double pcpu = process_cpu() - p0;
      const double baseline = loop(false);   // after the clocks: not in the round's time
      const double loop_cpu = baseline;
      if (st.acked != events || st.spool_records != 0)
        fmt::print(stderr, "round {}: not all acknowledged: {}\n", r, hvtrace::publish::summary(st));
      rate.push_back(static_cast<double>(st.acked) / secs);
      caller_us.push_back(std::max(0.0, caller - baseline) / static_cast<double>(events) * 1e6);
      process_us.push_back(std::max(0.0, pcpu - loop_cpu) / static_cast<double>(events) * 1e6);
      report["rounds"].push_back({{"events_per_s", rate.back()},
                                  {"caller_cpu_us_per_event", caller_us.back()},
                                  {"process_cpu_us_per_event", process_us.back()},
                                  {"seconds", secs},
                                  {"acked", st.acked},
                                  {"spooled", st.spooled},
                                  {"retries", st.retries}});
      fmt::print(stderr, "round {}: {:.0f} events/s, caller {:.2f} us/event, process {:.2f} us/event ({} acked in {:.2f} s)\n", r + 1,
                 rate.back(), caller_us.back(), process_us.back(), st.acked, secs);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "publish_bench: {}\n", e.what());
    fs::remove_all(root);
    return 1;
  }
  fs::remove_all(root);
  report["median"] = {{"events_per_s", median(rate)}, {"caller_cpu_us_per_event", median(caller_us)},
                      {"process_cpu_us_per_event", median(process_us)}};
  fmt::print("publish_bench: {} events x {} rounds to {} (file storage{}): median {:.0f} events/s; publisher CPU per event: "
             "{:.2f} us in the caller's thread, {:.2f} us for the whole process\n",
             events, rounds, cluster ? "a 3-node JetStream cluster" : "one JetStream server", cluster ? ", replicas 3" : "",
             median(rate), median(caller_us), median(process_us));
  if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
  return check_target && median(rate) < 10000 ? 3 : 0;
}
