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

// Every layout scripts/kallsyms.c has emitted since 6.1: (layout, seqs_of_names, absolute per-CPU rule).
struct LayoutCase {
  KallsymsLayout layout;
  bool with_seqs, absolute_percpu;
  const char* name;
};
constexpr LayoutCase kLayouts[] = {
    {KallsymsLayout::kBaseFirst, false, true, "Linux61Upstream"},
    {KallsymsLayout::kBaseFirst, true, true, "Linux61DebianAndLinux62To63"},
    {KallsymsLayout::kTokensFirst, true, true, "Linux64To612"},
    {KallsymsLayout::kTokensFirst, true, false, "NoAbsolutePercpu"},
    {KallsymsLayout::kBaseFirst, false, false, "BaseFirstNoAbsolutePercpu"},
};

// Without absolute per-CPU symbols every symbol lies at or above relative_base.
std::vector<Symbol> sample_for(const LayoutCase& c, std::size_t n) {
  auto s = sample(n);
  if (!c.absolute_percpu) s.erase(s.begin(), s.begin() + 2);
  return s;
}

class KallsymsTest : public ::testing::TestWithParam<LayoutCase> {};
}  // namespace

TEST_P(KallsymsTest, LocatesAndDecodesEverySymbol) {
  const LayoutCase c = GetParam();
  mem::FakeMem m(64ULL << 20);
  const auto syms = sample_for(c, 1000);
  auto written = write_kallsyms_for_test(m, GPA{0x1234000}, syms, kBase, c.with_seqs, c.layout, c.absolute_percpu);
  ASSERT_TRUE(written) << written.error().message;
  auto t = locate_kallsyms(m);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->layout, c.layout);
  EXPECT_EQ(t->absolute_percpu, c.absolute_percpu);
  EXPECT_EQ(t->token_table, written->token_table);
  EXPECT_EQ(t->relative_base_at, written->relative_base_at);
  EXPECT_EQ(t->offsets, written->offsets);
  EXPECT_EQ(t->names, written->names);
  EXPECT_EQ(t->num_syms, syms.size());
  EXPECT_EQ(t->relative_base, kBase);
  EXPECT_EQ(t->seqs_of_names.has_value(), c.with_seqs);
  EXPECT_EQ(t->span_begin(), 0x1234000u);
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
  EXPECT_EQ(again->layout, c.layout);
  // A cached relative_base position that is off by one slot is not accepted.
  EXPECT_FALSE(validate_kallsyms_at(m, GPA{written->relative_base_at.value + 8}, written->token_table));
}

// A table whose names need more than one 256-name block, with one over 127 bytes in the last block.
TEST_P(KallsymsTest, ManyBlocksAndABigNameInTheLastBlock) {
  const LayoutCase c = GetParam();
  mem::FakeMem m(64ULL << 20);
  auto syms = sample_for(c, 3000);
  syms.push_back({std::string(200, 'z'), 't', GVA{kBase + 0x200000}});
  auto written = write_kallsyms_for_test(m, GPA{0x2000000}, syms, kBase, c.with_seqs, c.layout, c.absolute_percpu);
  ASSERT_TRUE(written) << written.error().message;
  auto t = locate_kallsyms(m);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->num_syms, syms.size());
  auto out = decode_kallsyms(m, *t);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(out->back().name, std::string(200, 'z'));
  EXPECT_EQ(out->back().addr, GVA{kBase + 0x200000});
}

INSTANTIATE_TEST_SUITE_P(Layouts, KallsymsTest, ::testing::ValuesIn(kLayouts),
                         [](const ::testing::TestParamInfo<LayoutCase>& i) { return std::string(i.param.name); });

TEST(Kallsyms, TokensFirstWithoutARelativeBaseIsNamedAsUnhandled) {
  // The names, markers and tokens of a >= 6.4 table are there but the slot after the offsets
  // holds no kernel address (as with PC-relative offsets): the error says which step failed.
  mem::FakeMem m(64ULL << 20);
  auto w = write_kallsyms_for_test(m, GPA{0x100000}, sample(600), kBase, true, KallsymsLayout::kTokensFirst);
  ASSERT_TRUE(w);
  ASSERT_TRUE(m.write_as<std::uint64_t>(w->relative_base_at, 0x1234));
  auto t = locate_kallsyms(m);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("kallsyms_names and kallsyms_markers end at token table"), std::string::npos)
      << t.error().message;
  EXPECT_NE(t.error().message.find("not handled"), std::string::npos) << t.error().message;
}

TEST(Kallsyms, UnsortedOffsetsAreRejected) {
  mem::FakeMem m(64ULL << 20);
  auto w = write_kallsyms_for_test(m, GPA{0x100000}, sample(600), kBase, true, KallsymsLayout::kTokensFirst);
  ASSERT_TRUE(w);
  // Symbol 10's offset now points past every later symbol.
  ASSERT_TRUE(m.write_as<std::int32_t>(GPA{w->offsets.value + 40}, -0x7000000));
  EXPECT_FALSE(locate_kallsyms(m));
}

TEST(Kallsyms, TokensFirstCorruptMarkerOrCountIsRejected) {
  for (int which = 0; which < 2; ++which) {
    mem::FakeMem m(64ULL << 20);
    auto w = write_kallsyms_for_test(m, GPA{0x100000}, sample(600), kBase, true, KallsymsLayout::kTokensFirst);
    ASSERT_TRUE(w);
    if (which == 0) ASSERT_TRUE(m.write_as<std::uint32_t>(GPA{w->markers.value + 4}, 12345));
    else ASSERT_TRUE(m.write_as<std::uint32_t>(w->num_syms_at, w->num_syms + 1));
    auto t = locate_kallsyms(m);
    EXPECT_FALSE(t) << which;
  }
}

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
