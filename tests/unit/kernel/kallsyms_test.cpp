// kallsyms extraction on tables laid out in fake memory exactly as scripts/kallsyms.c does.
#include "kernel/kallsyms.hpp"

#include <gtest/gtest.h>

using namespace hvtrace;
using namespace hvtrace::kernel;

namespace {
constexpr std::uint64_t kBase = 0xffffffffa2000000ULL;

std::vector<Symbol> sample(std::size_t n) {
  std::vector<Symbol> s;
  s.push_back({"irq_stack_backing_store", 'D', GVA{0x0}});   // per-CPU: absolute
  s.push_back({"current_task", 'D', GVA{0x1fbc0}});
  s.push_back({"_text", 'T', GVA{kBase}});
  for (std::size_t i = 0; i < n; ++i)
    s.push_back({fmt::format("{}sym_t_{}", i % 2 != 0 ? "__" : "", i), "TtDdBbRr"[i % 8], GVA{kBase + 16 * (i + 1)}});
  s.push_back({std::string(300, 'q'), 'T', GVA{kBase + 0x100000}});  // "big" symbol: 2-byte length
  return s;
}

class KallsymsTest : public ::testing::TestWithParam<bool> {};
}  // namespace

TEST_P(KallsymsTest, LocatesAndDecodesEverySymbol) {
  mem::FakeMem m(64ULL << 20);
  const auto syms = sample(1000);
  auto written = write_kallsyms_for_test(m, GPA{0x1234000}, syms, kBase, GetParam());
  ASSERT_TRUE(written) << written.error().message;
  auto t = locate_kallsyms(m);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->token_table, written->token_table);
  EXPECT_EQ(t->relative_base_at, written->relative_base_at);
  EXPECT_EQ(t->num_syms, syms.size());
  EXPECT_EQ(t->relative_base, kBase);
  EXPECT_EQ(t->seqs_of_names.has_value(), GetParam());
  auto out = decode_kallsyms(m, *t);
  ASSERT_TRUE(out) << out.error().message;
  ASSERT_EQ(out->size(), syms.size());
  for (std::size_t i = 0; i < syms.size(); ++i) {
    EXPECT_EQ((*out)[i].name, syms[i].name) << i;
    EXPECT_EQ((*out)[i].type, syms[i].type) << i;
    EXPECT_EQ((*out)[i].addr, syms[i].addr) << syms[i].name;
  }
  auto again = validate_kallsyms_at(m, written->relative_base_at, written->token_table);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->num_syms, syms.size());
}

INSTANTIATE_TEST_SUITE_P(SeqsOfNames, KallsymsTest, ::testing::Bool());

TEST(Kallsyms, EmptyMemorySaysWhatWasNotFound) {
  mem::FakeMem m(256ULL << 20);
  auto t = locate_kallsyms(m);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message.rfind("kallsyms token table not found in 256 MiB of RAM", 0), 0u) << t.error().message;
}

TEST(Kallsyms, CorruptMarkersOrCountsAreRejectedNotTrusted) {
  mem::FakeMem m(64ULL << 20);
  auto w = write_kallsyms_for_test(m, GPA{0x100000}, sample(600), kBase, true);
  ASSERT_TRUE(w);
  ASSERT_TRUE(m.write_as<std::uint32_t>(GPA{w->markers.value + 4}, 12345));  // second marker lies
  auto t = locate_kallsyms(m);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("no kallsyms_relative_base"), std::string::npos) << t.error().message;

  mem::FakeMem m2(64ULL << 20);
  auto w2 = write_kallsyms_for_test(m2, GPA{0x100000}, sample(600), kBase, true);
  ASSERT_TRUE(w2);
  ASSERT_TRUE(m2.write_as<std::uint32_t>(GPA{w2->relative_base_at.value + 8}, 0xffffffff));  // huge count
  EXPECT_FALSE(locate_kallsyms(m2));
}

TEST(Kallsyms, ADecoyDigitRunBeforeTheRealTableIsSkipped) {
  mem::FakeMem m(64ULL << 20);
  const char decoy[] = "x\0" "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9\0";
  ASSERT_TRUE(m.write(GPA{0x10000}, std::as_bytes(std::span(decoy))));
  ASSERT_TRUE(write_kallsyms_for_test(m, GPA{0x800000}, sample(10), kBase, false));
  auto t = locate_kallsyms(m);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->num_syms, 14u);
}

TEST(Kallsyms, AcceptCallbackCanRejectACandidate) {
  mem::FakeMem m(64ULL << 20);
  ASSERT_TRUE(write_kallsyms_for_test(m, GPA{0x800000}, sample(10), kBase, false));
  auto t = locate_kallsyms(m, {}, [](const KallsymsTables&) { return false; });
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("rejected"), std::string::npos) << t.error().message;
}
