// `hvtrace bench session --quick`: one round of each arm (unwatched, `hvtrace session --follow`,
// the same with --publish to a local nats-server) and a 30-s RSS run on the default guest. Asserts
// what must hold whatever the timings: every run completed, each watched run recorded exactly the
// one session with every typed command, printed each with --follow, lost no event, and published
// everything; the watcher reported its --follow latency. Timings are printed, never asserted.
#include "quick_run.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>

namespace hvtrace {
namespace {

using nlohmann::json;

TEST(BenchSession, QuickRunRecordsEverySessionWithNoLoss) {
  const auto q = run_quick_bench("session");
  ASSERT_FALSE(q.results.is_null());
  const auto& dir = q.dir;
  const json& results = q.results;
  EXPECT_TRUE(std::filesystem::exists(dir / "session.md"));
  EXPECT_TRUE(std::filesystem::exists(dir / "rss.tsv"));
  const unsigned typed = results.at("config").at("commands_typed").get<unsigned>();

  std::map<std::string, json> run;
  for (const auto& x : results.at("runs")) run[x.at("arm").get<std::string>()] = x;
  for (const char* a : {"idle", "session", "publish"}) {
    ASSERT_TRUE(run.count(a)) << a << " did not run";
    EXPECT_TRUE(run[a].value("ok", false)) << a << ": " << run[a].value("error", "");
    EXPECT_GT(run[a].value("guest_s", 0.0), 0) << a;
  }
  for (const char* a : {"session", "publish"}) {
    EXPECT_EQ(run[a].value("sessions", 0u), 1u) << a;
    EXPECT_EQ(run[a].value("commands", 0u), typed) << a;
    EXPECT_EQ(run[a].value("follow_count", 0u), typed) << a;
    EXPECT_EQ(run[a].value("lost", 1u), 0u) << a;
    EXPECT_GE(run[a].value("follow_max_ms", -1.0), 0) << a;
  }
  EXPECT_GT(run["publish"].value("published", 0u), 0u);
  EXPECT_EQ(run["publish"].value("acked", 0u), run["publish"].value("published", 1u));
  EXPECT_EQ(run["publish"].value("spool_left", 1u), 0u);
  const json& rss = results.at("rss_run");
  EXPECT_TRUE(rss.value("ok", false)) << rss.value("error", "");
  EXPECT_EQ(rss.value("lost", 1u), 0u);
  EXPECT_GT(rss.value("rss_max_kib", 0u), 0u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hvtrace
