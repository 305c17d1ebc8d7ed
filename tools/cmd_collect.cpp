// hvtrace collect: the other end of `hvtrace session --publish`. A durable pull consumer on the
// hvtrace JetStream stream writes every sensor's sessions into DIR in the layout `hvtrace session
// -o` writes (DIR/<sid>/events.jsonl, transcript.txt, session.cast), resuming where it stopped
// (the durable consumer remembers what was acknowledged; what was written but not acknowledged
// before a crash is recognised on disk). docs/publish.md describes the format.
#include "commands.hpp"

#include "common/result.hpp"
#include "publish/collector.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <memory>
#include <string>

namespace hvtrace::tools {
namespace {

struct CollectOptions {
  std::string from;
  std::string dir = "collected";
  std::string durable = "hvtrace-collect";
  std::string stream = "HVTRACE";
  int batch = 256;
  double idle_exit = 0;
};

const char* kFooter = R"(
Writes DIR/<session id>/events.jsonl, transcript.txt and session.cast for every session any
sensor publishes (hvtrace session --publish). A message is acknowledged only once what it wrote is
on disk; a message delivered again (after a restart, a server failover) is recognised on disk and
skipped, so every event line is written exactly once, in order per session. Collectors started
with the same --durable name share the stream's messages (point them at the same DIR). Progress
goes to stderr; Ctrl-C stops cleanly (unacknowledged messages are delivered again later).

Exit status: 0 when stopped (Ctrl-C, SIGTERM, --idle-exit); 2 for a malformed or unreachable URL
or an unwritable DIR.

Examples:
  hvtrace collect --from nats://127.0.0.1:4222 -o /srv/honeypot/sessions
  hvtrace collect --from nats://n1:4222,nats://n2:4222 -o /srv/sessions --durable central
)";

void run_collect(const CollectOptions& o) {
  vm::install_termination_handlers();
  publish::CollectorConfig c;
  c.urls = o.from;
  c.dir = o.dir;
  c.durable = o.durable;
  c.stream = o.stream;
  c.batch = o.batch;
  c.idle_exit_s = o.idle_exit;
  c.stop = [] { return vm::termination_requested(); };
  c.log = [](const std::string& line) { fmt::print(stderr, "hvtrace: collect: {}\n", line); };
  publish::Collector col(c);
  fmt::print(stderr, "hvtrace: collecting stream '{}' from {} as durable consumer '{}' into {} (Ctrl-C to stop)\n", o.stream, o.from,
             o.durable, o.dir);
  const auto st = col.run();
  fmt::print(stderr, "hvtrace: {}\n", publish::summary(st));
}

}  // namespace

void add_collect_command(CLI::App& app) {
  auto o = std::make_shared<CollectOptions>();
  auto* cmd = app.add_subcommand("collect", "Write every sensor's published sessions (NATS JetStream) into DIR, as `session -o` does");
  cmd->footer(kFooter);
  cmd->add_option("--from", o->from, "NATS server URL(s): nats://HOST:PORT[,nats://HOST:PORT...]")->required();
  cmd->add_option("-o,--output-dir", o->dir, "write one folder per session under DIR")->capture_default_str();
  cmd->add_option("--durable", o->durable, "durable consumer name (collectors with the same name share the work)")->capture_default_str();
  cmd->add_option("--stream", o->stream, "JetStream stream name")->capture_default_str();
  cmd->add_option("--batch", o->batch, "messages fetched at a time")->capture_default_str()->check(CLI::Range(1, 10000));
  cmd->add_option("--idle-exit", o->idle_exit, "stop after this many seconds with no message once the stream holds nothing more for this consumer (default: until Ctrl-C)");
  cmd->callback([o] { run_collect(*o); });
}

}  // namespace hvtrace::tools
