#include "publish/publisher.hpp"

#include "common/result.hpp"
#include "publish/nats_util.hpp"
#include "publish/spool.hpp"

#include <fmt/core.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <variant>

namespace hvtrace::publish {

namespace {
struct FileJob {
  std::string sid, name;
  std::filesystem::path path;
};
using Item = std::variant<Message, FileJob>;
constexpr std::uint64_t kMaxFileBytes = 512ULL << 20;
}  // namespace

struct Publisher::Impl {
  PublisherConfig cfg;
  std::string sensor_cache;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  std::unique_ptr<Spool> spool;

  std::mutex mu;   // queue, seqs, stopping
  std::condition_variable cv;
  std::deque<Item> queue;
  std::uint64_t queue_bytes = 0;
  std::map<std::string, std::uint64_t> seqs;
  bool stopping = false;
  std::chrono::steady_clock::time_point deadline;

  mutable std::mutex stats_mu;
  PublisherStats st;

  std::atomic<std::uint64_t> batch_ok{0}, batch_fail{0}, batch_dup{0};
  std::deque<Message> mem;   // I/O thread only
  std::thread io;
  bool closed = false;

  static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
    auto* self = static_cast<Impl*>(closure);
    if (pa != nullptr && pae == nullptr) {
      self->batch_ok++;
      if (pa->Duplicate) self->batch_dup++;
    } else {
      self->batch_fail++;
    }
    natsMsg_Destroy(msg);
  }

  bool connected() const { return natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED; }

  void add_stats(auto f) {
    std::lock_guard l(stats_mu);
    f(st);
  }

  // Every message of the batch acknowledged (stored or already stored)?
  bool send(const std::vector<Message>& batch) {
    batch_ok = 0;
    batch_fail = 0;
    batch_dup = 0;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = cfg.ack_wait_ms;
    std::size_t issued = 0;
    for (const auto& m : batch) {
      natsMsg* nm = nullptr;
      natsStatus s = natsMsg_Create(&nm, m.subject.c_str(), nullptr, m.data.data(), static_cast<int>(m.data.size()));
      for (const auto& [k, v] : m.headers)
        if (s == NATS_OK) s = natsMsgHeader_Set(nm, k.c_str(), v.c_str());
      if (s == NATS_OK) s = js_PublishMsgAsync(js, &nm, &po);
      if (nm != nullptr) natsMsg_Destroy(nm);   // not taken by the library (an error)
      if (s != NATS_OK) break;
      ++issued;
    }
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = cfg.ack_wait_ms + 1000;
    natsStatus s = issued ? js_PublishAsyncComplete(js, &wait) : NATS_OK;
    if (s != NATS_OK) {
      natsMsgList pending{};
      if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK) natsMsgList_Destroy(&pending);
    }
    const bool ok = issued == batch.size() && batch_ok.load() >= batch.size() && batch_fail.load() == 0;
    add_stats([&](PublisherStats& x) {
      x.sent += issued;
      if (ok) {
        x.acked += batch.size();
        x.duplicates += batch_dup.load();
      } else {
        x.retries++;
      }
    });
    return ok;
  }

  void to_spool(std::deque<Message>& from) {
    std::uint64_t in = 0, lost = 0;
    for (auto& m : from) (spool->append(m) ? in : lost)++;
    from.clear();
    if (in) spool->sync();
    add_stats([&](PublisherStats& x) {
      x.spooled += in;
      x.dropped += lost;
    });
  }

  void take(std::deque<Item>& got) {
    for (auto& it : got) {
      if (auto* m = std::get_if<Message>(&it)) {
        mem.push_back(std::move(*m));
        continue;
      }
      const auto& f = std::get<FileJob>(it);
      std::error_code ec;
      const auto size = std::filesystem::file_size(f.path, ec);
      if (ec) continue;   // not written (e.g. no terminal: no session.cast): nothing to publish
      std::string content;
      if (size <= kMaxFileBytes) {
        std::ifstream in(f.path, std::ios::binary);
        content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      }
      if (size > kMaxFileBytes || content.size() != size) {
        add_stats([](PublisherStats& x) { x.dropped++; });
        continue;
      }
      auto msgs = file_messages(sensor_of(f.sid), cfg.vm, f.sid, f.name, content, cfg.chunk_bytes);
      add_stats([&](PublisherStats& x) { x.file_chunks += msgs.size(); });
      for (auto& m : msgs) mem.push_back(std::move(m));
    }
    got.clear();
  }

  std::map<std::string, std::string> sensors;   // sid -> sensor (I/O thread), from its events
  std::mutex sensors_mu;
  std::string sensor_of(const std::string& sid) {
    std::lock_guard l(sensors_mu);
    auto it = sensors.find(sid);
    return it == sensors.end() ? std::string("hvtrace") : it->second;
  }

  void run() {
    auto last_fail = std::chrono::steady_clock::time_point{};
    for (;;) {
      std::deque<Item> got;
      bool stop = false;
      {
        std::unique_lock l(mu);
        const bool work = !queue.empty() || !mem.empty() || (!spool->empty() && connected());
        if (!work && !stopping) cv.wait_for(l, std::chrono::milliseconds(100));
        got.swap(queue);
        queue_bytes = 0;
        stop = stopping;
      }
      take(got);
      const bool up = connected();
      const bool backing_off = std::chrono::steady_clock::now() - last_fail < std::chrono::milliseconds(250);
      if (!up || !spool->empty() || backing_off) to_spool(mem);
      if (up && !backing_off) {
        if (!spool->empty()) {
          auto b = spool->peek(cfg.batch);
          if (!b.empty() && send(b)) {
            spool->consume(b.size());
          } else {
            last_fail = std::chrono::steady_clock::now();
          }
        } else if (!mem.empty()) {
          std::vector<Message> b;
          for (std::size_t i = 0; i < mem.size() && b.size() < cfg.batch; ++i) b.push_back(mem[i]);
          if (send(b)) {
            mem.erase(mem.begin(), mem.begin() + static_cast<std::ptrdiff_t>(b.size()));
          } else {
            last_fail = std::chrono::steady_clock::now();
            to_spool(mem);
          }
        }
      }
      add_stats([&](PublisherStats& x) {
        x.connected = up;
        x.spool_records = spool->stats().records;
        x.spool_bytes = spool->stats().bytes;
      });
      if (stop) {
        std::unique_lock l(mu);
        if (queue.empty() && mem.empty() && spool->empty()) break;
        if (std::chrono::steady_clock::now() >= deadline) {
          l.unlock();
          std::deque<Item> rest;
          {
            std::lock_guard l2(mu);
            rest.swap(queue);
          }
          take(rest);
          to_spool(mem);
          break;
        }
        if (!up || backing_off) {
          l.unlock();
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    }
    add_stats([&](PublisherStats& x) {
      x.spool_records = spool->stats().records;
      x.spool_bytes = spool->stats().bytes;
    });
  }

  void push(Item it, std::size_t bytes) {
    {
      std::lock_guard l(mu);
      if (stopping || queue_bytes + bytes > cfg.queue_max_bytes) {
        add_stats([](PublisherStats& x) { x.dropped++; });
        return;
      }
      queue_bytes += bytes;
      queue.push_back(std::move(it));
    }
    cv.notify_one();
  }
};

Publisher::Publisher(PublisherConfig cfg) : impl_(std::make_unique<Impl>()) {
  auto& d = *impl_;
  d.cfg = std::move(cfg);
  const auto urls = parse_urls(d.cfg.urls);
  if (d.cfg.spool_dir.empty()) throw UserError("--spool: the publisher needs a spool directory");
  if (d.cfg.batch == 0) d.cfg.batch = 1;
  d.spool = std::make_unique<Spool>(d.cfg.spool_dir, d.cfg.spool_max_bytes);
  d.st.spool_restored = d.spool->stats().records;
  d.nc = connect(urls, "hvtrace-publish", d.cfg.connect_timeout_ms);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 5000;
  jo.PublishAsync.MaxPending = static_cast<int64_t>(d.cfg.batch) * 2;
  jo.PublishAsync.AckHandler = &Impl::on_ack;
  jo.PublishAsync.AckHandlerClosure = &d;
  if (natsStatus s = natsConnection_JetStream(&d.js, d.nc, &jo); s != NATS_OK) {
    natsConnection_Destroy(d.nc);
    throw UserError(fmt::format("NATS: no JetStream context: {}", status_text(s)));
  }
  try {
    StreamSettings ss;
    ss.name = d.cfg.stream;
    ss.replicas = d.cfg.replicas;
    ss.max_age_s = d.cfg.max_age_s;
    ss.max_bytes = d.cfg.max_bytes;
    d.st.replicas = ensure_stream(d.js, d.nc, ss, 15000);
  } catch (...) {
    jsCtx_Destroy(d.js);
    natsConnection_Destroy(d.nc);
    throw;
  }
  d.st.connected = true;
  d.io = std::thread([&d] { d.run(); });
}

Publisher::~Publisher() {
  if (impl_ && !impl_->closed) close(std::chrono::milliseconds(0));
}

void Publisher::event(const nlohmann::json& e) {
  auto& d = *impl_;
  std::string sid;
  if (auto it = e.find("session"); it != e.end() && it->is_string()) sid = *it;
  if (!valid_sid(sid)) return;
  std::uint64_t seq;
  {
    std::lock_guard l(d.mu);
    seq = ++d.seqs[sid];
  }
  if (auto it = e.find("sensor"); it != e.end() && it->is_string() && seq == 1) {
    std::lock_guard l(d.sensors_mu);
    if (d.sensors.size() > 65536) d.sensors.clear();
    d.sensors[sid] = *it;
  }
  auto m = event_message(e, d.cfg.vm, seq);
  if (!m) return;
  d.add_stats([](PublisherStats& x) { x.events++; });
  const std::size_t b = m->bytes();
  d.push(std::move(*m), b);
}

void Publisher::file(const std::string& sid, const std::string& name, const std::filesystem::path& path) {
  if (!valid_sid(sid) || !publishable_file(name)) return;
  impl_->push(FileJob{sid, name, path}, 256);
}

void Publisher::session_closed(const std::string& sid) {
  std::lock_guard l(impl_->mu);
  impl_->seqs.erase(sid);
}

PublisherStats Publisher::stats() const {
  std::lock_guard l(impl_->stats_mu);
  return impl_->st;
}

PublisherStats Publisher::close(std::chrono::milliseconds flush) {
  auto& d = *impl_;
  if (!d.closed) {
    {
      std::lock_guard l(d.mu);
      d.stopping = true;
      d.deadline = std::chrono::steady_clock::now() + flush;
    }
    d.cv.notify_one();
    if (d.io.joinable()) d.io.join();
    d.closed = true;
    jsCtx_Destroy(d.js);
    natsConnection_Destroy(d.nc);
    d.js = nullptr;
    d.nc = nullptr;
    d.spool.reset();   // fdatasync + unlock
  }
  return stats();
}

std::string summary(const PublisherStats& s) {
  return fmt::format("published: {} events + {} file chunks; {} acked by the stream ({} duplicates), {} sends, {} retried batches; "
                     "spooled {}, dropped {}; left in the spool: {} ({} bytes){}",
                     s.events, s.file_chunks, s.acked, s.duplicates, s.sent, s.retries, s.spooled, s.dropped, s.spool_records,
                     s.spool_bytes, s.spool_restored ? fmt::format("; {} restored from a previous run's spool", s.spool_restored) : "");
}

}  // namespace hvtrace::publish
