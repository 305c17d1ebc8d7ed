// lib/publish and `hvtrace collect` against real nats-server processes started here on free
// loopback ports, in temp dirs (names start with itest-nats):
//  - a 3-node JetStream cluster, replicas 3: sessions published through the library while one node
//    is killed and restarted, the collector killed (SIGKILL) and restarted: every event arrives
//    exactly once, in order per session, and the collected files equal the source files;
//  - every server down for a while: messages spooled and counted, delivered when it is back, and
//    what a closed publisher left in the spool sent first by the next one;
//  - bad input: malformed and unreachable URLs, a server without JetStream: clear errors.
#include "common/result.hpp"
#include "publish/local_nats.hpp"
#include "publish/publisher.hpp"

#include <gtest/gtest.h>
#include <nats/nats.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

namespace hvtrace::publish {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int free_port() { return free_loopback_port(); }

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / fmt::format("itest-nats-{}-{}", tag, ::getpid());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    if (!::testing::Test::HasFailure()) fs::remove_all(path);
  }
};

// A session's source files, as lib/session writes them; events published one by one.
struct SourceSession {
  std::string sid;
  std::vector<json> events;
  std::string transcript, cast;
};

std::vector<SourceSession> make_sessions(const fs::path& dir, int sessions, int events, std::size_t file_bytes, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<SourceSession> out;
  for (int s = 0; s < sessions; ++s) {
    SourceSession x;
    x.sid = fmt::format("{:012x}", (static_cast<std::uint64_t>(rng()) << 16) ^ rng());
    for (int i = 0; i < events; ++i) {
      const char* ids[] = {"cowrie.command.input", "hvtrace.process.exec", "hvtrace.process.exit", "cowrie.login.failed"};
      json e = {{"eventid", i == 0 ? "cowrie.session.connect" : i == events - 1 ? "cowrie.session.closed" : ids[rng() % 4]},
                {"session", x.sid},
                {"sensor", "itest-nats sensor.1"},
                {"src_ip", "10.0.2.2"},
                {"timestamp", fmt::format("2026-12-02T04:00:{:02}.{:06}Z", i % 60, i)},
                {"input", fmt::format("echo {} \xff {}", i, std::string(rng() % 200, 'x'))},
                {"n", i},
                {"duration", i * 0.125}};
      x.events.push_back(e);
    }
    for (std::size_t i = 0; x.transcript.size() < file_bytes; ++i) x.transcript += fmt::format("[{}] root $ ls -l {}\n", i, rng());
    x.cast = "{\"version\":2,\"width\":80,\"height\":24}\n";
    for (std::size_t i = 0; x.cast.size() < file_bytes * 2; ++i) x.cast += fmt::format("[{}.5, \"o\", \"line {} \\r\\n\"]\n", i, rng());
    const fs::path d = dir / x.sid;
    fs::create_directories(d);
    std::ofstream ev(d / "events.jsonl", std::ios::binary);
    for (const auto& e : x.events) ev << e.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    std::ofstream(d / "transcript.txt", std::ios::binary) << x.transcript;
    std::ofstream(d / "session.cast", std::ios::binary) << x.cast;
    out.push_back(std::move(x));
  }
  return out;
}

void expect_same(const fs::path& src, const fs::path& got, const std::vector<SourceSession>& sessions) {
  for (const auto& s : sessions)
    for (const char* f : {"events.jsonl", "transcript.txt", "session.cast"}) {
      ASSERT_TRUE(fs::exists(got / s.sid / f)) << s.sid << "/" << f << " was not collected";
      const std::string a = slurp(src / s.sid / f), b = slurp(got / s.sid / f);
      EXPECT_EQ(a.size(), b.size()) << s.sid << "/" << f;
      EXPECT_TRUE(a == b) << s.sid << "/" << f << " differs from the source";
    }
}

PublisherConfig pub_config(const std::string& urls, const fs::path& spool) {
  PublisherConfig c;
  c.urls = urls;
  c.vm = "itest-nats-vm";
  c.spool_dir = spool;
  c.chunk_bytes = 64 << 10;
  c.max_bytes = 256 << 20;
  c.ack_wait_ms = 2000;
  return c;
}

template <typename F>
bool eventually(F f, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!f()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

pid_t start_collector(const std::string& urls, const fs::path& out, const fs::path& log, double idle_exit = 0) {
  std::vector<std::string> a = {HVTRACE_BIN, "collect", "--from", urls, "-o", out.string(), "--durable", "itest-nats-durable"};
  if (idle_exit > 0) {
    a.push_back("--idle-exit");
    a.push_back(fmt::format("{}", idle_exit));
  }
  return spawn_logged(a, log);
}

// A collector that dies holding a batch: the durable consumer's first `n` messages fetched and
// never acknowledged (the collector's consumer settings, or binding it would fail).
void fetch_and_abandon(const std::string& url, int n) {
  natsConnection* nc = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&nc, url.c_str()), NATS_OK);
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = "HVTRACE";
  so.Config.Durable = "itest-nats-durable";
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.DeliverPolicy = js_DeliverAll;
  so.Config.AckWait = 5'000'000'000LL;
  so.Config.MaxDeliver = -1;
  so.Config.MaxAckPending = 20000;
  natsSubscription* sub = nullptr;
  ASSERT_EQ(js_PullSubscribe(&sub, js, "hvtrace.>", "itest-nats-durable", nullptr, &so, nullptr), NATS_OK) << nats_GetLastError(nullptr);
  natsMsgList list{};
  ASSERT_EQ(natsSubscription_Fetch(&list, sub, n, 5000, nullptr), NATS_OK);
  EXPECT_EQ(list.Count, n);
  natsMsgList_Destroy(&list);
  natsSubscription_Destroy(sub);   // not Unsubscribe: the durable consumer stays
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

TEST(PublishCluster, NodeAndCollectorKilledEveryEventOnceInOrder) {
  TempDir t("cluster");
  LocalNats nats(t.path, 3, "itest-nats");
  nats.start();
  const fs::path src = t.path / "src", got = t.path / "collected";
  const auto sessions = make_sessions(src, 4, 1500, 150 << 10, 11);

  // The collector runs while publishing; it is killed (SIGKILL) halfway and restarted at the end.
  const fs::path clog = t.path / "collector.log";
  pid_t col = start_collector(nats.urls(), got, clog);
  ASSERT_GT(col, 0);

  Publisher pub(pub_config(nats.urls(), t.path / "spool"));
  EXPECT_EQ(pub.stats().replicas, 3);
  const std::size_t per = sessions[0].events.size();
  std::size_t sent = 0;
  std::uintmax_t killed_at = 0;
  for (std::size_t i = 0; i < per; ++i) {
    for (const auto& s : sessions) {
      pub.event(s.events[i]);
      ++sent;
    }
    if (i == per / 3) nats.kill(1, SIGKILL);   // a node gone mid-stream
    if (i == per / 2) {   // the collector killed once it has written some of it
      const auto written = [&] {
        std::uintmax_t n = 0;
        std::error_code ec;
        for (const auto& s : sessions) n += fs::file_size(got / s.sid / "events.jsonl", ec) * !ec;
        return n;
      };
      EXPECT_TRUE(eventually([&] { return written() > 0; }, 30s)) << slurp(clog);
      ::kill(col, SIGKILL);
      wait_exit(col, 5s);
      killed_at = written();
    }
    if (i == 2 * per / 3) nats.start(1);   // and back
    if (i % 10 == 0) std::this_thread::sleep_for(10ms);   // a stream over a few seconds, not one burst
  }
  for (const auto& s : sessions) {
    pub.file(s.sid, "transcript.txt", src / s.sid / "transcript.txt");
    pub.file(s.sid, "session.cast", src / s.sid / "session.cast");
  }
  const auto st = pub.close(60s);
  EXPECT_EQ(st.events, sent);
  EXPECT_EQ(st.dropped, 0u);
  EXPECT_EQ(st.spool_records, 0u);
  EXPECT_EQ(st.acked, st.events + st.file_chunks);
  std::cerr << summary(st) << "\n";

  col = start_collector(nats.urls(), got, clog, 4);
  const int rc = wait_exit(col, 90s);
  if (rc < 0) ::kill(col, SIGKILL);
  EXPECT_EQ(rc, 0) << slurp(clog);
  std::cerr << slurp(clog);
  EXPECT_GT(killed_at, 0u);
  expect_same(src, got, sessions);
}

TEST(PublishOutage, SpooledWhileDownDeliveredAfterAndNextRunSendsLeftoversFirst) {
  TempDir t("outage");
  LocalNats nats(t.path, 1, "itest-nats");
  nats.start();
  const fs::path src = t.path / "src", got = t.path / "collected", spool = t.path / "spool";
  const auto sessions = make_sessions(src, 3, 300, 20 << 10, 22);
  {
    Publisher pub(pub_config(nats.urls(), spool));
    for (std::size_t i = 0; i < 100; ++i) pub.event(sessions[0].events[i]);
    ASSERT_TRUE(eventually([&] { return pub.stats().acked == 100; }, 20s)) << summary(pub.stats());
    nats.kill(0, SIGKILL);   // every server down
    for (std::size_t i = 100; i < 300; ++i) pub.event(sessions[0].events[i]);
    ASSERT_TRUE(eventually([&] { return pub.stats().spooled >= 150; }, 20s)) << summary(pub.stats());
    const auto down = pub.stats();
    EXPECT_FALSE(down.connected);
    EXPECT_EQ(down.dropped, 0u);
    EXPECT_GT(down.spool_records, 0u);
    std::this_thread::sleep_for(1s);
    nats.start(0);
    ASSERT_TRUE(eventually([&] { return pub.stats().acked >= 300 && pub.stats().spool_records == 0; }, 30s)) << summary(pub.stats());
    pub.file(sessions[0].sid, "transcript.txt", src / sessions[0].sid / "transcript.txt");
    pub.file(sessions[0].sid, "session.cast", src / sessions[0].sid / "session.cast");
    const auto st = pub.close(20s);
    EXPECT_EQ(st.spool_records, 0u);
    EXPECT_EQ(st.acked, 300 + st.file_chunks);
    std::cerr << summary(st) << "\n";
  }
  // A run that ends while the servers are down: its messages stay in the spool...
  {
    Publisher pub(pub_config(nats.urls(), spool));
    nats.kill(0, SIGKILL);
    for (std::size_t k = 1; k < 3; ++k) {
      for (const auto& e : sessions[k].events) pub.event(e);
      pub.file(sessions[k].sid, "transcript.txt", src / sessions[k].sid / "transcript.txt");
      pub.file(sessions[k].sid, "session.cast", src / sessions[k].sid / "session.cast");
    }
    const auto st = pub.close(1s);
    EXPECT_EQ(st.acked, 0u);
    EXPECT_EQ(st.spool_records, 600 + st.file_chunks);
    std::cerr << summary(st) << "\n";
  }
  // ... and the next run with the same spool sends them first.
  nats.start(0);
  {
    Publisher pub(pub_config(nats.urls(), spool));
    const auto first = pub.stats();
    EXPECT_GE(first.spool_restored, 600u);
    const auto st = pub.close(30s);
    EXPECT_EQ(st.spool_records, 0u);
    EXPECT_EQ(st.acked, first.spool_restored);
    std::cerr << summary(st) << "\n";
  }
  // The first 40 messages go to a collector that dies holding them: the real one gets later
  // events first, leaves them for redelivery until the 40 come back (ack wait), then writes all.
  fetch_and_abandon(nats.node(0).url(), 40);
  const fs::path clog = t.path / "collector.log";
  const pid_t col = start_collector(nats.urls(), got, clog, 3);
  const int rc = wait_exit(col, 60s);
  if (rc < 0) ::kill(col, SIGKILL);
  EXPECT_EQ(rc, 0) << slurp(clog);
  EXPECT_EQ(slurp(clog).find(" 0 left for redelivery"), std::string::npos) << slurp(clog);   // the wait happened
  std::cerr << slurp(clog);
  expect_same(src, got, sessions);
}

TEST(PublishBadInput, MalformedUnreachableAndNoJetStream) {
  TempDir t("bad");
  const auto spool = t.path / "spool";
  const auto error_of = [&](const std::string& url) -> std::string {
    try {
      Publisher p(pub_config(url, spool));
      return "";
    } catch (const UserError& e) {
      return e.what();
    }
  };
  for (const char* bad : {"localhost:4222", "http://127.0.0.1:4222", "nats://", "nats://127.0.0.1:0", "nats://h:1,,nats://h:2"})
    EXPECT_NE(error_of(bad).find("malformed NATS URL"), std::string::npos) << bad;
  const int dead = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(error_of(fmt::format("nats://127.0.0.1:{}", dead)).find("cannot reach a NATS server"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  {
    LocalNats plain(t.path, 1, "itest-nats-nojs", false);   // no JetStream
    plain.start();
    EXPECT_NE(error_of(plain.urls()).find("JetStream"), std::string::npos) << error_of(plain.urls());
  }
  // The commands: exit 2 with one clear line, before anything starts.
  const auto run = [&](const std::vector<std::string>& args, std::string& out) {
    const fs::path log = t.path / "cmd.log";
    fs::remove(log);
    const pid_t p = spawn_logged(args, log);
    const int rc = wait_exit(p, 30s);
    out = slurp(log);
    return rc;
  };
  std::string out;
  EXPECT_EQ(run({HVTRACE_BIN, "collect", "--from", fmt::format("nats://127.0.0.1:{}", dead), "-o", (t.path / "c").string()}, out), 2);
  EXPECT_NE(out.find("hvtrace: error: cannot reach a NATS server"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(t.path / "c"));
  EXPECT_EQ(run({HVTRACE_BIN, "collect", "--from", "nats:/x", "-o", (t.path / "c").string()}, out), 2);
  EXPECT_NE(out.find("malformed NATS URL"), std::string::npos) << out;
  EXPECT_EQ(run({HVTRACE_BIN, "session", "--vm", "itest-nats-none", "-o", (t.path / "s").string(), "--publish", "nats//x"}, out), 2);
  EXPECT_NE(out.find("malformed NATS URL"), std::string::npos) << out;
  EXPECT_EQ(run({HVTRACE_BIN, "session", "--vm", "itest-nats-none", "-o", (t.path / "s").string(), "--publish",
                 fmt::format("nats://127.0.0.1:{}", dead)},
                out),
            2);
  EXPECT_NE(out.find("cannot reach a NATS server"), std::string::npos) << out;
}

}  // namespace
}  // namespace hvtrace::publish
