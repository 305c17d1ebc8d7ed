// lib/publish without a server: subjects, URLs, chunking, the spool (bounded, counted, ordered,
// ids stable across reopening, corrupt files refused) and the collector's idempotent writer.
#include "common/result.hpp"
#include "publish/message.hpp"
#include "publish/sink.hpp"
#include "publish/spool.hpp"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <random>

namespace hvtrace::publish {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& tag) {
  auto d = fs::temp_directory_path() / ("hvtrace-publish-unit-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

nlohmann::json ev(const std::string& sid, const std::string& id, int n) {
  return {{"eventid", id}, {"session", sid}, {"sensor", "s1"}, {"timestamp", "2026-12-02T00:00:00.000000Z"}, {"n", n}, {"src_ip", ""}};
}

Message msg(int i) {
  return *event_message(ev("abcdef012345", "cowrie.command.input", i), "vm1", static_cast<std::uint64_t>(i));
}

TEST(Subject, TokensAreSanitized) {
  EXPECT_EQ(sanitize_token("honey pot.1*>"), "honey_pot_1__");
  EXPECT_EQ(sanitize_token(""), "_");
  EXPECT_EQ(sanitize_token("\xc3\xa9t\xc3\xa9"), "__t__");
  EXPECT_EQ(sanitize_token(std::string(200, 'a')).size(), kMaxTokenBytes);
  EXPECT_EQ(event_subject("sensor.a", "vm 1", "cowrie.session.connect"), "hvtrace.sensor_a.vm_1.cowrie.session.connect");
  EXPECT_EQ(event_subject("s", "v", "a..b"), "hvtrace.s.v.a._.b");
  EXPECT_EQ(event_subject("s", "v", ""), "hvtrace.s.v._");
  EXPECT_EQ(file_subject("s", "v", "abc", "transcript.txt"), "hvtrace.s.v.file.abc.transcript");
  EXPECT_EQ(file_subject("s", "v", "abc", "session.cast"), "hvtrace.s.v.file.abc.cast");
  EXPECT_TRUE(valid_sid("0123456789ab"));
  EXPECT_FALSE(valid_sid("../etc"));
  EXPECT_FALSE(valid_sid(""));
}

TEST(Urls, GoodAndBad) {
  EXPECT_EQ(parse_urls("nats://127.0.0.1:4222").size(), 1u);
  EXPECT_EQ(parse_urls("nats://a:1,nats://b:2,tls://[::1]:3").size(), 3u);
  EXPECT_EQ(parse_urls("nats://host").size(), 1u);
  for (const char* bad : {"", "127.0.0.1:4222", "http://x:1", "nats://", "nats://:4222", "nats://h:0", "nats://h:99999", "nats://h:x",
                          "nats://a:1,", "nats://h o:1"}) {
    try {
      parse_urls(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("NATS URL"), std::string::npos) << e.what();
    }
  }
}

TEST(EventMessage, BodyAddsVmAndLineRoundTrips) {
  auto e = ev("abcdef012345", "cowrie.login.failed", 3);
  e["password"] = "p\xff";   // invalid UTF-8 as the writer sees it
  e["duration"] = 12.345678;
  const std::string line = e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  auto m = event_message(e, "vm.x", 7);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->subject, "hvtrace.s1.vm_x.cowrie.login.failed");
  EXPECT_EQ(m->msg_id(), "abcdef012345:7");
  EXPECT_EQ(nlohmann::json::parse(m->data)["vm"], "vm.x");
  EXPECT_EQ(event_line(m->data), line);
  EXPECT_FALSE(event_message(nlohmann::json{{"eventid", "x"}}, "v", 1));
  EXPECT_FALSE(event_message(ev("../../x", "x", 1), "v", 1));
}

TEST(Chunks, SplitWithOffsetsAndFinalMarker) {
  std::string content(1000, 'x');
  auto c = file_messages("s", "v", "sid1", "transcript.txt", content, 300);
  ASSERT_EQ(c.size(), 4u);
  std::string joined;
  for (std::size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(*c[i].header(kChunkHeader), std::to_string(i));
    EXPECT_EQ(*c[i].header(kOffsetHeader), std::to_string(joined.size()));
    EXPECT_EQ(c[i].header(kLastHeader) != nullptr, i == 3);
    EXPECT_EQ(c[i].msg_id(), "sid1:transcript.txt:" + std::to_string(i));
    joined += c[i].data;
  }
  EXPECT_EQ(joined, content);
  EXPECT_EQ(*c[3].header(kSizeHeader), "1000");
  auto e = file_messages("s", "v", "sid1", "session.cast", "", 300);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_TRUE(e[0].header(kLastHeader));
  EXPECT_EQ(file_messages("s", "v", "sid1", "session.cast", std::string(600, 'y'), 300).size(), 2u);
}

TEST(Spool, OrderedBoundedCountedAndStableAcrossReopen) {
  const auto d = temp_dir("spool");
  std::uint64_t bound = 0;
  {
    Spool sp(d, 1 << 20);
    for (int i = 1; i <= 100; ++i) ASSERT_TRUE(sp.append(msg(i)));
    EXPECT_EQ(sp.stats().records, 100u);
    auto b = sp.peek(10);
    ASSERT_EQ(b.size(), 10u);
    EXPECT_EQ(b[0].msg_id(), "abcdef012345:1");
    sp.consume(10);
    EXPECT_EQ(sp.stats().records, 90u);
    bound = sp.stats().bytes;
  }
  {
    Spool sp(d, 1 << 20);   // a later run: same ids, same order, the consumed ones gone
    EXPECT_EQ(sp.stats().records, 90u);
    EXPECT_EQ(sp.stats().bytes, bound);
    auto b = sp.peek(1000);
    ASSERT_EQ(b.size(), 90u);
    for (int i = 0; i < 90; ++i) EXPECT_EQ(b[static_cast<std::size_t>(i)].msg_id(), "abcdef012345:" + std::to_string(i + 11));
    EXPECT_EQ(b[0].data, msg(11).data);
    EXPECT_EQ(b[0].headers, msg(11).headers);
    sp.consume(90);
    EXPECT_TRUE(sp.empty());
    EXPECT_EQ(fs::file_size(d / "spool.log"), 0u);
  }
  {
    // Bounded: appends beyond max_bytes are refused (the caller counts them dropped).
    const auto one = encode_record(msg(1)).size();
    Spool sp(d, one * 5 + 1);
    int ok = 0;
    for (int i = 1; i <= 8; ++i) ok += sp.append(msg(i));
    EXPECT_EQ(ok, 5);
    sp.consume(2);
    EXPECT_TRUE(sp.append(msg(9)));
    auto b = sp.peek(10);
    ASSERT_EQ(b.size(), 4u);
    EXPECT_EQ(b.back().msg_id(), "abcdef012345:9");
  }
  fs::remove_all(d);
}

TEST(Spool, SecondProcessIsRefused) {
  const auto d = temp_dir("lock");
  Spool a(d, 1 << 20);
  const pid_t pid = ::fork();
  if (pid == 0) {
    try {
      Spool b(d, 1 << 20);
      ::_exit(0);
    } catch (const UserError& e) {
      ::_exit(std::string(e.what()).find("in use") != std::string::npos ? 3 : 4);
    }
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_EQ(WEXITSTATUS(st), 3);
  fs::remove_all(d);
}

TEST(Spool, TornTailIsCutAndCorruptFilesRefused) {
  const auto d = temp_dir("corrupt");
  {
    Spool sp(d, 1 << 20);
    for (int i = 1; i <= 3; ++i) sp.append(msg(i));
  }
  const std::string good = slurp(d / "spool.log");
  const auto write = [&](const std::string& bytes) {
    std::ofstream(d / "spool.log", std::ios::binary | std::ios::trunc) << bytes;
  };
  // A crash mid-append: the partial record is cut off, the rest kept.
  write(good + encode_record(msg(4)).substr(0, 20));
  {
    Spool sp(d, 1 << 20);
    EXPECT_EQ(sp.stats().records, 3u);
    EXPECT_EQ(sp.stats().torn_tail_bytes, 20u);
  }
  EXPECT_EQ(slurp(d / "spool.log"), good);
  const auto refused = [&](const std::string& bytes, const std::string& why) {
    write(bytes);
    try {
      Spool sp(d, 1 << 20);
      ADD_FAILURE() << "accepted a spool with " << why;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("corrupt"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  std::string flipped = good;
  flipped[good.size() - 3] ^= 0x40;
  refused(flipped, "checksum");
  refused(good + std::string("GARBAGEGARBAGE"), "magic");
  std::string huge = good.substr(0, 4) + std::string("\xff\xff\xff\x7f", 4) + good.substr(8);
  refused(huge, "out of bounds");
  // A hostile head pointing past the log.
  write(good);
  std::ofstream(d / "spool.head", std::ios::trunc) << "99999999\n";
  refused(good, "spool.head");
  std::ofstream(d / "spool.head", std::ios::trunc) << "0\n";
  fs::remove_all(d);
}

TEST(Record, DecodeRejectsHostileFields) {
  std::size_t used = 0;
  std::string err;
  Message m = msg(1);
  EXPECT_TRUE(decode_record(encode_record(m), used, err));
  m.headers.emplace_back("Bad", "a\nb");
  EXPECT_FALSE(decode_record(encode_record(m), used, err));
  EXPECT_NE(err.find("line break"), std::string::npos);
  Message noid = msg(1);
  noid.headers.erase(noid.headers.begin());
  EXPECT_FALSE(decode_record(encode_record(noid), used, err));
  EXPECT_NE(err.find("Nats-Msg-Id"), std::string::npos);
  Message sp = msg(1);
  sp.subject = "a b";
  EXPECT_FALSE(decode_record(encode_record(sp), used, err));
  // Random bytes never crash and are never accepted as a record.
  std::mt19937 rng(1);
  for (int i = 0; i < 2000; ++i) {
    std::string b(static_cast<std::size_t>(rng() % 64), '\0');
    for (auto& c : b) c = static_cast<char>(rng());
    EXPECT_FALSE(decode_record(b, used, err));
  }
}

TEST(Sink, EventsExactlyOnceInOrderAcrossRestarts) {
  const auto d = temp_dir("sink");
  const std::string sid = "0123456789ab";
  std::string expect;
  std::vector<Message> msgs;
  for (int i = 1; i <= 10; ++i) {
    auto e = ev(sid, "cowrie.command.input", i);
    expect += e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    msgs.push_back(*event_message(e, "vm", static_cast<std::uint64_t>(i)));
  }
  {
    SessionSink s(d);
    EXPECT_EQ(s.handle(msgs[0]).outcome, SessionSink::Outcome::kWritten);
    EXPECT_EQ(s.handle(msgs[2]).outcome, SessionSink::Outcome::kWait);   // 2 missing
    EXPECT_EQ(s.handle(msgs[1]).outcome, SessionSink::Outcome::kWritten);
    EXPECT_EQ(s.handle(msgs[0]).outcome, SessionSink::Outcome::kDuplicate);
    EXPECT_EQ(s.handle(msgs[2]).outcome, SessionSink::Outcome::kWritten);
  }
  {
    SessionSink s(d);   // a restarted collector: redeliveries of 1..3 skipped
    for (int i = 0; i < 10; ++i) s.handle(msgs[static_cast<std::size_t>(i)]);
    EXPECT_EQ(s.stats().duplicates, 3u);
    EXPECT_EQ(s.stats().events, 7u);
  }
  EXPECT_EQ(slurp(d / sid / "events.jsonl"), expect);
  // A crash after the index record but before the line: both cut back, the line written again.
  {
    std::ofstream(d / sid / ".events.idx", std::ios::binary | std::ios::app) << std::string("\x0b\0\0\0\0\0\0\0", 8);
    std::ofstream(d / sid / "events.jsonl", std::ios::binary | std::ios::app) << "{\"half";
    SessionSink s(d);
    auto e = ev(sid, "cowrie.session.closed", 11);
    EXPECT_EQ(s.handle(*event_message(e, "vm", 11)).outcome, SessionSink::Outcome::kWritten);
    expect += e.dump() + "\n";
  }
  EXPECT_EQ(slurp(d / sid / "events.jsonl"), expect);
  // A gap that never fills is written after enough deliveries.
  {
    SessionSink s(d, 3);
    auto m = *event_message(ev(sid, "x", 13), "vm", 13);
    EXPECT_EQ(s.handle(m, 1).outcome, SessionSink::Outcome::kWait);
    EXPECT_EQ(s.handle(m, 3).outcome, SessionSink::Outcome::kWritten);
    EXPECT_EQ(s.stats().gaps, 1u);
  }
  fs::remove_all(d);
}

TEST(Sink, FilesFromChunksInAnyOrderOnce) {
  const auto d = temp_dir("sinkfile");
  std::string content;
  for (int i = 0; i < 5000; ++i) content += static_cast<char>('a' + i % 26);
  auto c = file_messages("s", "v", "0123456789ab", "session.cast", content, 1024);
  ASSERT_EQ(c.size(), 5u);
  SessionSink s(d);
  EXPECT_EQ(s.handle(c[1]).outcome, SessionSink::Outcome::kWait);
  EXPECT_EQ(s.handle(c[0]).outcome, SessionSink::Outcome::kWritten);
  EXPECT_EQ(s.handle(c[0]).outcome, SessionSink::Outcome::kDuplicate);
  for (std::size_t i = 1; i < c.size(); ++i) EXPECT_EQ(s.handle(c[i]).outcome, SessionSink::Outcome::kWritten);
  EXPECT_EQ(s.handle(c[4]).outcome, SessionSink::Outcome::kDuplicate);
  EXPECT_EQ(slurp(d / "0123456789ab" / "session.cast"), content);
  EXPECT_FALSE(fs::exists(d / "0123456789ab" / ".session.cast.part"));
  // Hostile: unknown file names and session ids that are paths are rejected.
  Message bad = c[0];
  for (auto& [k, v] : bad.headers)
    if (k == kFileHeader) v = "../../etc/passwd";
  EXPECT_EQ(s.handle(bad).outcome, SessionSink::Outcome::kRejected);
  Message badsid = c[0];
  for (auto& [k, v] : badsid.headers)
    if (k == kSessionHeader) v = "../x";
  EXPECT_EQ(s.handle(badsid).outcome, SessionSink::Outcome::kRejected);
  fs::remove_all(d);
}

}  // namespace
}  // namespace hvtrace::publish
