// lib/bench without a guest: the GDB remote protocol client against a scripted stub on a loopback
// socket, the target-description parser on QEMU's own layout, bootstrap intervals, and the
// consistency checks and report of `hvtrace bench table1` on synthetic results.
#include "bench/gdb_rsp.hpp"
#include "bench/report.hpp"
#include "bench/scale_report.hpp"
#include "bench/session_report.hpp"
#include "bench/stats.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

namespace hvtrace::bench {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// The shape of QEMU 10's i386-64bit.xml: a commented-out block of registers that must not count.
constexpr const char* kQemuLikeXml = R"(<?xml version="1.0"?>
<feature name="org.gnu.gdb.i386.core">
  <reg name="rax" bitsize="64" type="int64" regnum="0"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="x64_eflags"/>
  <!-- <reg name="cs_base" bitsize="64" type="int64"/>
  <reg name="es_base" bitsize="64" type="int64"/-->
  <reg name="gs_base" bitsize="64" type="int64"/>
  <flags id="x64_cr3" size="8"><field name="pdbr" start="12" end="63"/></flags>
  <reg name="cr3" bitsize="64" type="x64_cr3"/>
</feature>)";

TEST(GdbRsp, TargetDescriptionSkipsCommentsAndComputesOffsets) {
  const auto regs = parse_target_registers(kQemuLikeXml);
  ASSERT_EQ(regs.size(), 6u);
  EXPECT_EQ(regs[4].name, "gs_base");
  EXPECT_EQ(regs[4].regnum, 4u);
  EXPECT_EQ(regs[5].name, "cr3");
  EXPECT_EQ(regs[5].regnum, 5u);
  EXPECT_EQ(regs[5].bits, 64u);
  const auto inc = parse_target_includes(R"(<target><!-- <xi:include href="no.xml"/> --><xi:include href="i386-64bit.xml"/></target>)");
  ASSERT_EQ(inc.size(), 1u);
  EXPECT_EQ(inc[0], "i386-64bit.xml");
}

TEST(GdbRsp, FramingEscapingAndLittleEndianValues) {
  EXPECT_EQ(rsp_frame("g"), "$g#67");
  EXPECT_EQ(rsp_frame("OK"), "$OK#9a");
  EXPECT_EQ(rsp_frame("a#b"), "$a}\x03" "b#" + fmt::format("{:02x}", ('a' + '}' + 0x03 + 'b') & 0xff));
  EXPECT_EQ(rsp_unescape("a}\x03" "b"), "a#b");
  EXPECT_EQ(rsp_unescape("0* "), "0000");   // run length: ' ' - 29 = 3 more
  EXPECT_EQ(rsp_le_hex("7856341200000000", 0, 8), 0x12345678u);
  EXPECT_EQ(rsp_le_hex("00ff", 1, 1), 0xffu);
  EXPECT_FALSE(rsp_le_hex("xxxx", 0, 2));
  EXPECT_FALSE(rsp_le_hex("00", 0, 2));
}

// A scripted gdb stub: answers each packet from a table, acks in ack mode, stops after 'c'/'s'.
class FakeStub {
 public:
  FakeStub() {
    listen_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listen_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    socklen_t len = sizeof sa;
    getsockname(listen_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    listen(listen_, 1);
    t_ = std::thread([this] { serve(); });
  }
  ~FakeStub() {
    t_.join();
    close(listen_);
  }
  std::uint16_t port() const { return port_; }
  std::vector<std::string> received;

 private:
  void put(int fd, const std::string& payload) {
    const std::string f = "+" + rsp_frame(payload);
    (void)!write(fd, f.data(), f.size());
  }
  void serve() {
    const int fd = accept(listen_, nullptr, nullptr);
    std::string buf;
    char c;
    std::string regs(608 * 2, '0');
    regs.replace(0, 16, "0100000000000000");          // rax = 1 (write)
    regs.replace(204 * 2, 16, "00a0f00f00000000");    // cr3 = 0xff0a000
    for (;;) {
      if (read(fd, &c, 1) != 1) break;
      if (c == '+' || c == '-') continue;
      if (c == 0x03) {
        put(fd, "T02thread:p01.01;");
        continue;
      }
      if (c != '$') continue;
      std::string body;
      while (read(fd, &c, 1) == 1 && c != '#') body += c;
      char sum[2];
      if (read(fd, sum, 2) != 2) break;
      received.push_back(body);
      if (body.rfind("qSupported", 0) == 0) put(fd, "PacketSize=1000;qXfer:features:read+;multiprocess+");
      else if (body.rfind("qXfer:features:read:target.xml", 0) == 0)
        put(fd, R"(l<target><xi:include href="core.xml"/></target>)");
      else if (body.rfind("qXfer:features:read:core.xml", 0) == 0) put(fd, std::string("l") + kQemuLikeXml);
      else if (body == "g") put(fd, regs);
      else if (body.rfind("Z0,", 0) == 0 || body.rfind("z0,", 0) == 0) put(fd, "OK");
      else if (body == "c" || body == "s") put(fd, "T05thread:p01.01;");
      else if (body == "D;1") {
        put(fd, "OK");
        break;
      } else put(fd, "");
    }
    close(fd);
  }
  int listen_ = -1;
  std::uint16_t port_ = 0;
  std::thread t_;
};

TEST(GdbRsp, ClientTalksToAStub) {
  FakeStub stub;
  {
    auto c = RspClient::connect("127.0.0.1", stub.port(), 5s);
    ASSERT_TRUE(c) << c.error().message;
    c->set_timeout(2s);
    ASSERT_TRUE(c->handshake());
    auto regs = c->target_registers();
    ASSERT_TRUE(regs) << regs.error().message;
    // rax rbx rip eflags gs_base cr3: cr3 at 8+8+8+4+8 bytes.
    ASSERT_EQ(regs->back().name, "cr3");
    EXPECT_EQ(regs->back().offset, 36u);
    ASSERT_TRUE(c->insert_breakpoint(0xffffffff81000000ULL));
    auto stop = c->cont([] { return true; });
    ASSERT_TRUE(stop) << stop.error().message;
    EXPECT_EQ(stop->substr(0, 3), "T05");
    auto g = c->read_registers();
    ASSERT_TRUE(g);
    EXPECT_EQ(rsp_le_hex(*g, 0, 8), 1u);
    ASSERT_TRUE(c->step());
    ASSERT_TRUE(c->remove_breakpoint(0xffffffff81000000ULL));
    ASSERT_TRUE(c->detach());
  }
  EXPECT_NE(std::find(stub.received.begin(), stub.received.end(), "Z0,ffffffff81000000,1"), stub.received.end());
}

TEST(GdbRsp, ConnectFailsWithinItsTimeout) {
  const auto t0 = std::chrono::steady_clock::now();
  auto c = RspClient::connect("127.0.0.1", 1, 300ms);   // nothing listens on port 1
  EXPECT_FALSE(c);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
}

TEST(Stats, SummaryAndBootstrap) {
  const auto s = summarize({3, 1, 2, std::nan("")});
  EXPECT_EQ(s.n, 3u);
  EXPECT_DOUBLE_EQ(s.median, 2);
  EXPECT_DOUBLE_EQ(s.mean, 2);
  const auto one = bootstrap_ratio({2}, {1});
  ASSERT_TRUE(one);
  EXPECT_DOUBLE_EQ(one->point, 2);
  EXPECT_DOUBLE_EQ(one->lo, 2);
  const auto r = bootstrap_ratio({2.0, 2.2, 1.8, 2.1, 1.9}, {1.0, 1.1, 0.9, 1.0, 1.0});
  ASSERT_TRUE(r);
  EXPECT_NEAR(r->point, 2.0, 0.01);
  EXPECT_LE(r->lo, r->point);
  EXPECT_GE(r->hi, r->point);
  EXPECT_GT(r->lo, 1.8);
  EXPECT_LT(r->hi, 2.2);
  EXPECT_FALSE(bootstrap_ratio({1}, {0}));
}

json synthetic_results(double m4_cr3, double m2_calls) {
  json runs = json::array();
  const auto add = [&](const std::string& col, json extra) {
    json r = {{"pti", "off"}, {"round", 0}, {"column", col}, {"ok", true}, {"guest_s", 1.0}, {"wall_s", 1.2}, {"qemu_cpu_s", 1.0}};
    r.update(extra);
    runs.push_back(r);
  };
  add("none", {{"events_delivered", 0}});
  add("none2", {{"events_delivered", 0}});
  add("idle", {{"events_delivered", 0}});
  add("m2", {{"monitored_calls", m2_calls}, {"cr3_events", 0}});
  add("m3", {{"monitored_calls", 25}, {"cr3_events", 240}});
  add("m4", {{"monitored_calls", 25}, {"cr3_events", m4_cr3}});
  add("m5", {{"monitored_calls", 25}, {"cr3_events", 80}, {"guest_s", 1.01}});
  add("gdbstub", {{"monitored_calls", 30}, {"events_delivered", 27000}});
  return {{"config", {{"rounds", 1}, {"iterations", 1}, {"columns", {"none", "none2", "idle", "m2", "m3", "m4", "m5", "gdbstub"}},
                      {"pti", {"off"}}}},
          {"command", "hvtrace bench table1 --quick"},
          {"runs", runs}};
}

TEST(Table1Report, ConsistencyChecks) {
  EXPECT_TRUE(check_table1_counts(synthetic_results(90, 25)).empty());
  const auto bad = check_table1_counts(synthetic_results(300, 24));
  ASSERT_EQ(bad.size(), 2u);
  EXPECT_NE(bad[0].find("m2 saw 24"), std::string::npos) << bad[0];
  EXPECT_NE(bad[1].find("method 4 delivered 300"), std::string::npos) << bad[1];
}

TEST(Table1Report, MarkdownAndChartData) {
  const auto rep = make_table1_report(synthetic_results(90, 25));
  EXPECT_NE(rep.markdown.find("| monitored syscalls seen | – | – | – | 25 | 25 | 25 | 25 | 30 |"), std::string::npos) << rep.markdown;
  EXPECT_NE(rep.markdown.find("method 5 within 3% of none (pti=off) | +1.0% [+1.0, +1.0] | **met**"), std::string::npos)
      << rep.markdown;
  EXPECT_NE(rep.gnuplot_data.find("\"5: async, in hypervisor\" 1.01000"), std::string::npos) << rep.gnuplot_data;
  EXPECT_NE(rep.gnuplot_script.find("table1.svg"), std::string::npos);
}

}  // namespace
}  // namespace hvtrace::bench

namespace hvtrace::bench {
namespace {

// Synthetic `bench scale` results: guests x rounds x {idle, m5}, traced runs 10% slower.
nlohmann::json scale_results(unsigned rounds, const std::vector<unsigned>& counts) {
  nlohmann::json r;
  r["command"] = "hvtrace bench scale";
  r["started"] = "2026-12-02T00:00:00Z";
  r["machine"] = {{"cpu_model", "test cpu"}};
  r["config"] = {{"rounds", rounds}, {"iterations", 1}, {"vms", counts}};
  r["runs"] = nlohmann::json::array();
  for (const unsigned n : counts)
    for (unsigned round = 0; round < rounds; ++round)
      for (const std::string col : {"idle", "m5"})
        for (unsigned g = 0; g < n; ++g) {
          const double base = 10.0 * n + round * 0.1;
          nlohmann::json run = {{"vms", n}, {"guest", g}, {"round", round}, {"column", col}, {"ok", true},
                                {"guest_s", col == "m5" ? base * 1.1 : base}, {"qemu_cpu_s", col == "m5" ? base * 1.2 : base},
                                {"qemu_rss_kib", 300 * 1024}};
          if (col == "m5") {
            run["monitored_calls"] = 4242;
            run["lost"] = 0;
            run["tracer_peak_rss_kib"] = 20 * 1024;
          }
          r["runs"].push_back(run);
        }
  return r;
}

TEST(ScaleReport, OneRowPerGuestCountWithOverheadsAgainstTheSameRound) {
  const auto md = make_scale_report(scale_results(3, {1, 2, 4}));
  EXPECT_NE(md.find("| 1 | 10.10 | 11.11 | +10.0% [+10.0, +10.0] | +20.0% [+20.0, +20.0] | 1.00x | 20.0 | 300 | 0 |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 4 | 40.10 | 44.11 | +10.0%"), std::string::npos) << md;
  EXPECT_NE(md.find("| 3.97x |"), std::string::npos) << md;   // 40.1 / 10.1: untraced time grows with the guests
  EXPECT_TRUE(check_scale_counts(scale_results(3, {1, 2, 4})).empty());
}

TEST(ScaleReport, ChecksFlagFailedRunsLossAndDisagreeingCounts) {
  auto r = scale_results(2, {2});
  r["runs"][0]["ok"] = false;
  r["runs"][0]["error"] = "boom";
  for (auto& run : r["runs"])
    if (run["column"] == "m5" && run["guest"] == 1) {
      run["lost"] = 3;
      run["monitored_calls"] = 1;
    }
  const auto p = check_scale_counts(r);
  std::string all;
  for (const auto& s : p) all += s + "\n";
  EXPECT_NE(all.find("boom"), std::string::npos) << all;
  EXPECT_NE(all.find("3 events lost"), std::string::npos) << all;
  EXPECT_NE(all.find("different numbers of monitored calls"), std::string::npos) << all;
  r["runs"].erase(r["runs"].size() - 1);
  EXPECT_NE(check_scale_counts(r).size(), p.size());
}

// `bench session` results: rounds of idle (10 s), session (+2%) and publish (+2% + 0.5%), all watched
// runs clean, plus a flat RSS run.
nlohmann::json session_results(unsigned rounds) {
  nlohmann::json r = {{"command", "hvtrace bench session"}, {"config", {{"rounds", rounds}, {"iterations", 1}, {"commands_typed", 5},
                                                                        {"typing", "10-30"}}}};
  r["runs"] = nlohmann::json::array();
  for (unsigned i = 0; i < rounds; ++i)
    for (const char* arm : {"idle", "session", "publish"}) {
      const double f = std::string(arm) == "idle" ? 1.0 : std::string(arm) == "session" ? 1.02 : 1.02 * 1.005;
      nlohmann::json run = {{"arm", arm}, {"round", i}, {"ok", true}, {"qemu_cpu_s", 10.0 * f}, {"guest_s", 5.0}, {"wall_s", 12.0}};
      if (std::string(arm) != "idle") {
        run.update({{"sessions", 1}, {"commands", 5}, {"follow_count", 5}, {"lost", 0}, {"follow_median_ms", 1.5},
                    {"follow_max_ms", 4.0 + i}, {"watcher_peak_rss_kib", 20480}, {"watcher_cpu_s", 0.5}, {"events_delivered", 9000}});
        if (std::string(arm) == "publish") run.update({{"published", 300}, {"acked", 300}, {"publish_dropped", 0}, {"spool_left", 0}});
      }
      r["runs"].push_back(run);
    }
  r["rss_run"] = {{"ok", true}, {"minutes", 10}, {"rss_10s_kib", 20000}, {"rss_max_kib", 20500}, {"rss_end_kib", 20400}, {"lost", 0}};
  return r;
}

TEST(SessionReport, ArmsOverheadsAndTargets) {
  const auto md = make_session_report(session_results(3));
  EXPECT_NE(md.find("| QEMU CPU vs idle | – | +2.0% [+2.0, +2.0] | +2.5% [+2.5, +2.5] |"), std::string::npos) << md;
  EXPECT_NE(md.find("| QEMU CPU vs session | – | – | +0.5% [+0.5, +0.5] |"), std::string::npos) << md;
  EXPECT_NE(md.find("| watching costs ≤ 3% QEMU CPU over the unwatched run | +2.0% [+2.0, +2.0] | **met** |"), std::string::npos) << md;
  EXPECT_NE(md.find("max 6.0 ms over 30 commands"), std::string::npos) << md;
  EXPECT_NE(md.find("VmRSS: 19.5 MiB at 10 s, 19.9 MiB at the end, max 20.0 MiB (+2.5% over 10 s) | **met**"), std::string::npos) << md;
  // With RssAnon recorded, flatness is judged on it (VmRSS also counts guest RAM pages read).
  auto r = session_results(3);
  r["rss_run"].update({{"anon_10s_kib", 10240}, {"anon_max_kib", 10240}, {"anon_end_kib", 10240}, {"rss_max_kib", 40000}});
  const auto md2 = make_session_report(r);
  EXPECT_NE(md2.find("RssAnon: 10.0 MiB at 10 s, 10.0 MiB at the end, max 10.0 MiB (+0.0% over 10 s); VmRSS 19.5 / 19.9 / max 39.1 MiB | **met**"),
            std::string::npos)
      << md2;
  EXPECT_NE(md.find("| publishing adds ≤ 1% QEMU CPU over the same watched session | +0.5% [+0.5, +0.5] | **met** |"), std::string::npos)
      << md;
  EXPECT_TRUE(check_session_counts(session_results(3)).empty());
  EXPECT_EQ(md.find("guest instructions"), std::string::npos) << "no --icount, no instruction rows";
  // --icount: the guest's instructions per arm, and the watched arms' excess over the unwatched run.
  auto c = session_results(3);
  for (auto& run : c["runs"]) {
    run["guest_insns"] = run["arm"] == "idle" ? 2.0e9 : 2.2e9;
    if (run["arm"] != "idle") run["monitor_callback_s"] = 0.05;
  }
  const auto md3 = make_session_report(c);
  EXPECT_NE(md3.find("| guest instructions, millions | 2000 | 2200 | 2200 |"), std::string::npos) << md3;
  EXPECT_NE(md3.find("| guest instructions vs idle | – | +10.0% [+10.0, +10.0] | +10.0% [+10.0, +10.0] |"), std::string::npos) << md3;
  EXPECT_NE(md3.find("| monitor callbacks s (selftime, waits excluded) | – | 0.050 | 0.050 |"), std::string::npos) << md3;
  EXPECT_NE(md3.find("| monitor callbacks vs idle QEMU CPU | – | 0.50% | 0.50% |"), std::string::npos) << md3;
  EXPECT_EQ(md.find("neighbour"), std::string::npos) << "no neighbour arm, no neighbour rows";
  // The neighbour arm (+1.5% over idle with no watching): the watched arms against it, and the host
  // CPU beside QEMU in each arm (the neighbour thread's, the watcher's during the session).
  auto n = session_results(3);
  n["config"]["neighbour_us"] = 40;
  for (unsigned i = 0; i < 3; ++i) {
    n["runs"].push_back({{"arm", "neighbour"}, {"round", i}, {"ok", true}, {"qemu_cpu_s", 10.15}, {"guest_s", 5.0}, {"wall_s", 12.0},
                         {"neighbour_cpu_s", 0.25}});
  }
  for (auto& run : n["runs"])
    if (run["arm"] == "session" || run["arm"] == "publish") run["watcher_window_cpu_s"] = 0.24;
  const auto md4 = make_session_report(n);
  EXPECT_NE(md4.find("| | unwatched (monitor idle) | unwatched + busy host thread | hvtrace session --follow |"), std::string::npos) << md4;
  EXPECT_NE(md4.find("| host CPU beside QEMU s (watcher / neighbour thread) | – | 0.25 | 0.24 | 0.24 |"), std::string::npos) << md4;
  EXPECT_NE(md4.find("| QEMU CPU vs neighbour | – | – | +0.5% [+0.5, +0.5] | +1.0% [+1.0, +1.0] |"), std::string::npos) << md4;
  EXPECT_NE(md4.find("| QEMU CPU vs idle | – | +1.5% [+1.5, +1.5] | +2.0% [+2.0, +2.0] |"), std::string::npos) << md4;
  EXPECT_NE(md4.find("for 40 µs every millisecond"), std::string::npos) << md4;
}

TEST(SessionReport, ChecksFlagFailuresLossMissedCommandsAndUnackedMessages) {
  auto r = session_results(2);
  r["runs"][0]["ok"] = false;
  r["runs"][0]["error"] = "boom";
  r["runs"][1]["lost"] = 7;
  r["runs"][1]["commands"] = 4;
  r["runs"][2]["spool_left"] = 3;
  r["rss_run"]["rss_max_kib"] = 30000;
  std::string all;
  for (const auto& p : check_session_counts(r)) all += p + "\n";
  EXPECT_NE(all.find("boom"), std::string::npos) << all;
  EXPECT_NE(all.find("7 events lost"), std::string::npos) << all;
  EXPECT_NE(all.find("4 commands recorded, 5 typed"), std::string::npos) << all;
  EXPECT_NE(all.find("publishing incomplete"), std::string::npos) << all;
  const auto md = make_session_report(r);
  EXPECT_NE(md.find("| zero events lost | 7 lost over every watched run | **not met** |"), std::string::npos) << md;
  EXPECT_NE(md.find("**not met** (max > 10-s value + 5%)"), std::string::npos) << md;
}

}  // namespace
}  // namespace hvtrace::bench
