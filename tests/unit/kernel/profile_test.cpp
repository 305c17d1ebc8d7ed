// Profile sources: hvtrace JSON round trip, Volatility 3 ISF, System.map, and garbage.
#include "kernel/kernel.hpp"
#include "kernel/profile.hpp"
#include "linux/fake_guest.hpp"

#include <gtest/gtest.h>

#include <fstream>

using namespace hvtrace;
using namespace hvtrace::kernel;

TEST(Profile, JsonRoundTrip) {
  Profile p;
  p.banner = "Linux version 6.1.0";
  p.symbols["init_task"] = {0x1a0c940, false};
  p.symbols["current_task"] = {0x1fbc0, true};
  p.fields["task_struct.pid"] = {0x5c0, 4};
  p.kallsyms_token_table_off = 0x1234;
  auto q = parse_profile(profile_to_json(p), "mem");
  ASSERT_TRUE(q) << q.error().message;
  EXPECT_EQ(q->banner, p.banner);
  EXPECT_EQ(q->symbols["init_task"].value, 0x1a0c940u);
  EXPECT_TRUE(q->symbols["current_task"].absolute);
  EXPECT_EQ(q->fields["task_struct.pid"].offset, 0x5c0u);
  EXPECT_EQ(q->kallsyms_token_table_off, 0x1234u);
  EXPECT_EQ(q->key(), p.key());
  EXPECT_EQ(p.key().rfind("banner-", 0), 0u);
  p.build_id = "abcd";
  EXPECT_EQ(p.key(), "build-abcd");
}

TEST(Profile, SystemMapGivesUnslidSymbols) {
  auto p = parse_profile("0000000000000000 D fixed_percpu_data\n000000000001fbc0 D current_task\n"
                         "ffffffff81000000 T _text\nffffffff82a0c940 D init_task\n",
                         "System.map");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->symbols["init_task"].value, 0x1a0c940u);
  EXPECT_FALSE(p->symbols["init_task"].absolute);
  EXPECT_TRUE(p->symbols["current_task"].absolute);
  EXPECT_TRUE(p->fields.empty());
  EXPECT_FALSE(parse_profile("ffffffff81000000 T\n", "bad.map"));
  EXPECT_FALSE(parse_profile("zzzz T _text\n", "bad.map"));
}

TEST(Profile, VolatilityIsfGivesSymbolsAndFieldsThroughUnnamedMembers) {
  const char* isf = R"({
    "metadata": {"format": "6.2.0"},
    "base_types": {},
    "symbols": {"_text": {"address": 18446744071578845184}, "init_task": {"address": 18446744071606126912}},
    "user_types": {
      "task_struct": {"size": 9856, "fields": {"pid": {"offset": 1472}, "tgid": {"offset": 1476},
        "tasks": {"offset": 1200}, "comm": {"offset": 1888}, "mm": {"offset": 1296}, "active_mm": {"offset": 1304},
        "real_parent": {"offset": 1488}, "parent": {"offset": 1496}, "group_leader": {"offset": 1520},
        "real_cred": {"offset": 1864}, "cred": {"offset": 1872}, "start_time": {"offset": 1736},
        "__state": {"offset": 24}, "exit_state": {"offset": 1340}, "flags": {"offset": 44}}},
      "mm_struct": {"size": 1000, "fields": {"unnamed_field_0": {"offset": 0, "type": {"kind": "struct", "name": "unnamed_8a"}}}},
      "unnamed_8a": {"size": 900, "fields": {"pgd": {"offset": 80}}},
      "cred": {"size": 176, "fields": {"uid": {"offset": 4}, "gid": {"offset": 8}, "euid": {"offset": 20}}},
      "list_head": {"size": 16, "fields": {"next": {"offset": 0}}}
    }})";
  auto p = parse_profile(isf, "kernel.isf.json");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->fields["mm_struct.pgd"].offset, 80u);
  EXPECT_EQ(p->fields["task_struct.pid"].offset, 1472u);
  EXPECT_EQ(p->symbols["init_task"].value, 27281728u);  // relative to _text
  EXPECT_NE(p->sources["field task_struct.pid"].find("ISF"), std::string::npos);
}

TEST(Profile, GarbageIsAnErrorWithTheOrigin) {
  for (const char* text : {"{", "{\"hvtrace_profile\": 1}", "{\"hvtrace_profile\": 1, \"banner\": 3}", "[1,2]", "\x01\x02\x03"}) {
    auto p = parse_profile(text, "file.x");
    EXPECT_FALSE(p) << text;
    if (!p) {
      EXPECT_NE(p.error().message.find("file.x"), std::string::npos) << p.error().message;
    }
  }
}

TEST(Profile, SystemMapFileDrivesAttachWithBtfFromMemory) {
  auto g = fake::FakeGuest::build();
  ASSERT_TRUE(g);
  const std::string path = "/tmp/hvtrace-sysmap-test-" + std::to_string(getpid());
  {
    std::ofstream f(path);
    for (const auto& s : (*g)->symbols()) {
      // System.map carries link-time addresses: undo the fake's virtual slide.
      const std::uint64_t a = s.addr.value >= 0xffff800000000000ULL
                                  ? s.addr.value - (*g)->options().text_va + kDefaultTextVa
                                  : s.addr.value;
      f << fmt::format("{:016x} {} {}\n", a, s.type, s.name);
    }
  }
  AttachOptions ao;
  ao.profile_file = path;
  auto k = Kernel::attach((*g)->mem(), ao);
  std::remove(path.c_str());
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ((*k)->layout().text_va, GVA{(*g)->options().text_va});
  EXPECT_NE((*k)->profile().sources.at("symbol init_task").find("System.map"), std::string::npos);
  EXPECT_EQ((*k)->profile().field("task_struct.pid")->offset, fake::FakeLayout::kPid);
}
