#include "publish/collector.hpp"

#include "common/result.hpp"
#include "publish/nats_util.hpp"

#include <fmt/core.h>

#include <chrono>
#include <optional>
#include <set>
#include <tuple>
#include <thread>
#include <vector>

namespace hvtrace::publish {

struct Collector::Impl {
  CollectorConfig cfg;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsSubscription* sub = nullptr;
  std::unique_ptr<SessionSink> sink;
  CollectorStats st;

  ~Impl() {
    if (sub) natsSubscription_Destroy(sub);
    if (js) jsCtx_Destroy(js);
    if (nc) natsConnection_Destroy(nc);
  }

  void subscribe() {
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = cfg.stream.c_str();
    so.Config.Durable = cfg.durable.c_str();
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.DeliverPolicy = js_DeliverAll;
    // A collector that dies holding a batch: its messages come back after AckWait, well before a
    // later message waiting for them (left unacknowledged: redelivered every AckWait) is written
    // past the gap (30 deliveries).
    so.Config.AckWait = 5'000'000'000LL;
    so.Config.MaxDeliver = -1;
    so.Config.MaxAckPending = 20000;
    jsErrCode je = static_cast<jsErrCode>(0);
    const natsStatus s = js_PullSubscribe(&sub, js, "hvtrace.>", cfg.durable.c_str(), nullptr, &so, &je);
    if (s != NATS_OK)
      throw UserError(fmt::format("NATS: cannot bind the durable consumer '{}' on stream '{}': {} (JetStream error {})", cfg.durable,
                                  cfg.stream, status_text(s), static_cast<int>(je)));
  }

  // What the server still holds for this consumer: messages not yet delivered plus delivered and
  // not acknowledged (held by a collector that died, or left for redelivery). Empty when the
  // server cannot say (no leader during a failover, every server down).
  std::optional<std::uint64_t> outstanding() {
    jsConsumerInfo* ci = nullptr;
    jsErrCode je = static_cast<jsErrCode>(0);
    // (natsSubscription_GetConsumerInfo answers "Invalid Subscription" for a pull subscription in
    // libnats 3.4.1: ask the context by name.)
    if (js_GetConsumerInfo(&ci, js, cfg.stream.c_str(), cfg.durable.c_str(), nullptr, &je) != NATS_OK || !ci) return std::nullopt;
    const std::uint64_t n = ci->NumPending + static_cast<std::uint64_t>(ci->NumAckPending);
    jsConsumerInfo_Destroy(ci);
    return n;
  }
};

Collector::Collector(CollectorConfig cfg) : impl_(std::make_unique<Impl>()) {
  auto& d = *impl_;
  d.cfg = std::move(cfg);
  const auto urls = parse_urls(d.cfg.urls);
  if (d.cfg.durable.empty() || d.cfg.durable.find_first_of(". *>\t") != std::string::npos)
    throw UserError(fmt::format("--durable '{}': a consumer name has no dots, blanks or wildcards", d.cfg.durable));
  d.nc = connect(urls, "hvtrace-collect", d.cfg.connect_timeout_ms);
  std::error_code ec;
  std::filesystem::create_directories(d.cfg.dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", d.cfg.dir.string(), ec.message()));
  d.sink = std::make_unique<SessionSink>(d.cfg.dir, 30);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 5000;
  if (natsStatus s = natsConnection_JetStream(&d.js, d.nc, &jo); s != NATS_OK)
    throw UserError(fmt::format("NATS: no JetStream context: {}", status_text(s)));
  StreamSettings ss;
  ss.name = d.cfg.stream;
  ensure_stream(d.js, d.nc, ss, 15000);
  // The consumer's leader may still be electing right after a cluster starts: retry briefly.
  for (int i = 0;; ++i) {
    try {
      d.subscribe();
      break;
    } catch (const UserError&) {
      if (i >= 40) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
}

Collector::~Collector() = default;

CollectorStats Collector::run() {
  auto& d = *impl_;
  using clock = std::chrono::steady_clock;
  auto last_work = clock::now(), last_log = clock::now();
  std::uint64_t logged = 0;
  std::set<std::uint64_t> waiting;   // stream sequences NAKed until earlier messages are written
  while (!(d.cfg.stop && d.cfg.stop())) {
    natsMsgList list{};
    jsErrCode je = static_cast<jsErrCode>(0);
    const natsStatus s = natsSubscription_Fetch(&list, d.sub, d.cfg.batch, 1000, &je);
    if (s == NATS_OK && list.Count > 0) {
      last_work = clock::now();
      // Write everything, make it durable, then acknowledge (or NAK what waits for earlier ones).
      std::vector<std::tuple<natsMsg*, SessionSink::Outcome, std::uint64_t>> done;
      for (int i = 0; i < list.Count; ++i) {
        natsMsg* nm = list.Msgs[i];
        Message m;
        m.subject = natsMsg_GetSubject(nm) ? natsMsg_GetSubject(nm) : "";
        m.data.assign(natsMsg_GetData(nm) ? natsMsg_GetData(nm) : "", static_cast<std::size_t>(natsMsg_GetDataLength(nm)));
        const char** keys = nullptr;
        int nkeys = 0;
        if (natsMsgHeader_Keys(nm, &keys, &nkeys) == NATS_OK) {
          for (int k = 0; k < nkeys; ++k) {
            const char* v = nullptr;
            if (natsMsgHeader_Get(nm, keys[k], &v) == NATS_OK && v) m.headers.emplace_back(keys[k], v);
          }
          free(static_cast<void*>(keys));
        }
        std::uint64_t delivered = 1, stream_seq = 0;
        jsMsgMetaData* meta = nullptr;
        if (natsMsg_GetMetaData(&meta, nm) == NATS_OK) {
          delivered = meta->NumDelivered;
          stream_seq = meta->Sequence.Stream;
          jsMsgMetaData_Destroy(meta);
        }
        auto r = d.sink->handle(m, delivered);
        if (r.outcome == SessionSink::Outcome::kRejected && d.cfg.log)
          d.cfg.log(fmt::format("skipping a message on {}: {}", m.subject.substr(0, 200), r.why));
        d.st.messages++;
        done.emplace_back(nm, r.outcome, stream_seq);
      }
      d.sink->flush();
      for (auto& [nm, outcome, seq] : done) {
        if (outcome == SessionSink::Outcome::kWait) {
          // Not acknowledged: the server delivers it again after the ack wait, by when what it
          // waits for (held by a collector that died, or retried into the stream later) is back.
          // (A NAK with a delay was never redelivered by nats-server 2.9.10 in the cluster test.)
          d.st.naked++;
          waiting.insert(seq);
          continue;
        }
        waiting.erase(seq);
        if (false) {
        } else if (outcome == SessionSink::Outcome::kRejected) {
          natsMsg_Term(nm, nullptr);
          d.st.terminated++;
        } else {
          natsMsg_Ack(nm, nullptr);
          d.st.acked++;
        }
      }
      natsMsgList_Destroy(&list);
    } else {
      if (s == NATS_OK) natsMsgList_Destroy(&list);
      if (s != NATS_TIMEOUT && s != NATS_OK) {   // server failover, consumer leader moving
        d.st.fetch_errors++;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      // Idle: nothing for a while, no message waiting for earlier ones (those come back), and the
      // server holds nothing more for us: a quiet fetch alone may be a failover or messages a dead
      // collector holds until their ack wait ends. A server that cannot say for a minute more
      // ends the wait too (every server down).
      const auto quiet = clock::now() - last_work;
      const auto idle = std::chrono::duration<double>(d.cfg.idle_exit_s);
      if (d.cfg.idle_exit_s > 0 && waiting.empty() && quiet > idle) {
        const auto left = d.outstanding();
        if ((left && *left == 0) || quiet > idle + std::chrono::seconds(60)) break;
      }
    }
    if (d.cfg.log && clock::now() - last_log > std::chrono::seconds(5) && d.st.messages != logged) {
      last_log = clock::now();
      logged = d.st.messages;
      d.cfg.log(fmt::format("{} messages: {} events, {} files in {} sessions; {} duplicates skipped, {} waiting for earlier ones{}",
                            d.st.messages, d.sink->stats().events, d.sink->stats().files, d.sink->stats().sessions.size(),
                            d.sink->stats().duplicates, d.sink->stats().waits,
                            d.st.fetch_errors ? fmt::format("; {} failed fetches (failover)", d.st.fetch_errors) : ""));
    }
  }
  natsConnection_Flush(d.nc);   // the last acks out before we go
  d.st.sink = d.sink->stats();
  return d.st;
}

std::string summary(const CollectorStats& s) {
  return fmt::format("collected: {} messages ({} acked, {} left for redelivery to wait for earlier ones, {} rejected): {} events and {} files written "
                     "in {} sessions, {} duplicates skipped{}{}",
                     s.messages, s.acked, s.naked, s.terminated, s.sink.events, s.sink.files, s.sink.sessions.size(), s.sink.duplicates,
                     s.sink.gaps ? fmt::format(", {} events written after a gap that never filled", s.sink.gaps) : "",
                     s.fetch_errors ? fmt::format("; {} failed fetches (server failover)", s.fetch_errors) : "");
}

}  // namespace hvtrace::publish
