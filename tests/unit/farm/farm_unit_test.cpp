#include "farm/farm.hpp"

#include <gtest/gtest.h>

namespace hvtrace::farm {
namespace {

TEST(FarmPorts, ParsesRangesAndSinglePorts) {
  auto r = parse_port_range("2222-2229");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 2222);
  EXPECT_EQ(r->last, 2229);
  EXPECT_EQ(r->size(), 8u);
  auto one = parse_port_range("40000");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->size(), 1u);
  EXPECT_TRUE(parse_port_range("1-65535"));
}

TEST(FarmPorts, RejectsMalformedRanges) {
  for (const char* bad : {"", "-", "2222-", "-2222", "x", "2222-x", "0-10", "65535-65536", "2229-2222", "22 -23", "2222-2229-2230",
                          "99999"})
    EXPECT_FALSE(parse_port_range(bad)) << bad;
  EXPECT_NE(parse_port_range("2229-2222").error().message.find("below"), std::string::npos);
}

TEST(FarmPorts, RangeMustHoldEveryVm) {
  const PortRange r{2222, 2223};
  EXPECT_TRUE(check_port_count(r, 2));
  EXPECT_TRUE(check_port_count(r, 1));
  auto e = check_port_count(r, 3);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("2 port(s) for 3 VMs"), std::string::npos) << e.error().message;
  EXPECT_FALSE(check_port_count(r, 0));
}

TEST(FarmStates, NamesRoundTrip) {
  for (State s : {State::kBooting, State::kReady, State::kInSession, State::kResetting, State::kFailed}) {
    auto back = parse_state(state_name(s));
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(state_name(State::kInSession), "in_session");
  EXPECT_FALSE(parse_state("sleeping"));
}

FarmStatus sample() {
  FarmStatus s;
  s.name = "farm";
  s.supervisor_pid = 42;
  s.listen = "127.0.0.1";
  s.output_dir = "/tmp/out";
  s.sensor = "s1";
  s.started_unix = 1796185142.5;
  VmStatus a;
  a.name = "farm-0";
  a.port = 2222;
  a.state = State::kReady;
  a.sessions = 3;
  a.resets = 3;
  a.last_reset_unix = 1796185191.5;
  a.last_reset_s = 0.33;
  a.lost_events = 7;
  a.qemu_pid = 100;
  VmStatus b;
  b.name = "farm-1";
  b.port = 2223;
  b.state = State::kBooting;
  b.replaced = 1;
  b.error = "replaced: QEMU killed by signal 9";
  s.vms = {a, b};
  return s;
}

TEST(FarmStatusJson, RoundTripsEveryField) {
  const auto s = sample();
  const auto j = to_json(s);
  EXPECT_EQ(j["vms"][0]["state"], "ready");
  EXPECT_EQ(j["vms"][1]["replaced"], 1);
  auto back = status_from_json(j.dump());
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(to_json(*back), j);
}

TEST(FarmStatusJson, RejectsMalformedInput) {
  EXPECT_FALSE(status_from_json("{"));
  EXPECT_FALSE(status_from_json("{}"));
  auto j = to_json(sample());
  j["vms"][0]["state"] = "dancing";
  EXPECT_FALSE(status_from_json(j.dump()));
}

TEST(FarmStatusTable, HeaderAndAlignedRows) {
  const std::string t = format_table(sample());
  EXPECT_NE(t.find("VM                PORT STATE"), std::string::npos) << t;
  EXPECT_NE(t.find("farm-0            2222 ready"), std::string::npos) << t;
  EXPECT_NE(t.find("2026-12-02T04:19:51Z"), std::string::npos) << t;
  EXPECT_NE(t.find("farm-1: replaced: QEMU killed by signal 9"), std::string::npos) << t;
}

TEST(FarmMemory, ChecksAvailableMemory) {
  const std::uint64_t per_vm_kib = (256 + kOverheadMib) * 1024ull;
  EXPECT_TRUE(check_memory(2, 256, 2 * per_vm_kib));
  auto e = check_memory(3, 256, 2 * per_vm_kib);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("use fewer --vms"), std::string::npos);
  auto avail = mem_available_kib();
  ASSERT_TRUE(avail);
  EXPECT_GT(*avail, 0u);
}

}  // namespace
}  // namespace hvtrace::farm
