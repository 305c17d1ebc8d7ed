#include "session/writer.hpp"

#include "session/text.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <cmath>
#include <system_error>

namespace hvtrace::session {

namespace fs = std::filesystem;

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_->md);
    ctx_->md = nullptr;
  }
}

Sha256::~Sha256() {
  if (ctx_ && ctx_->md != nullptr) EVP_MD_CTX_free(ctx_->md);
}

void Sha256::update(std::string_view data) {
  if (ctx_->md != nullptr && !data.empty()) EVP_DigestUpdate(ctx_->md, data.data(), data.size());
}

std::string Sha256::hex() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (ctx_->md == nullptr || EVP_DigestFinal_ex(ctx_->md, out, &len) != 1) return {};
  EVP_MD_CTX_free(ctx_->md);
  ctx_->md = nullptr;
  std::string h;
  h.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) h += fmt::format("{:02x}", out[i]);
  return h;
}

SessionWriter::SessionWriter(const fs::path& root, std::string sid, std::string sensor, std::int64_t realtime_offset_ns)
    : dir_(root / sid), sid_(std::move(sid)), sensor_(std::move(sensor)), offset_(realtime_offset_ns) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) ++errors_;
  events_.open(dir_ / "events.jsonl", std::ios::binary | std::ios::app);
  transcript_.open(dir_ / "transcript.txt", std::ios::binary | std::ios::app);
  if (!events_ || !transcript_) ++errors_;
}

std::string SessionWriter::iso(std::uint64_t ns) const { return iso_time(unix_ns(ns)); }

void SessionWriter::write(std::ofstream& f, std::string_view text) {
  if (!f.is_open()) return;
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.flush();
  if (!f) {
    ++errors_;
    f.clear();
  }
}

void SessionWriter::event(std::string_view eventid, std::uint64_t ns, nlohmann::json fields) {
  nlohmann::json j = nlohmann::json::object();
  j["eventid"] = eventid;
  for (auto& [k, v] : fields.items()) j[k] = std::move(v);
  j["session"] = sid_;
  j["timestamp"] = iso(ns);
  j["sensor"] = sensor_;
  j["src_ip"] = src_ip_;
  // Every string was made valid UTF-8 before; `replace` is the last guard against a crash.
  write(events_, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  if (on_event_) on_event_(j);
}

void SessionWriter::transcript(std::string_view text) { write(transcript_, text); }

void SessionWriter::cast_start(std::uint64_t ns, unsigned width, unsigned height) {
  if (cast_started()) return;
  cast_start_ns_ = ns == 0 ? 1 : ns;
  cast_.open(dir_ / "session.cast", std::ios::binary | std::ios::trunc);
  if (!cast_) ++errors_;
  nlohmann::json h = {{"version", 2},
                      {"width", width},
                      {"height", height},
                      {"timestamp", unix_ns(ns) / 1'000'000'000},
                      {"title", fmt::format("hvtrace session {}", sid_)},
                      {"env", {{"TERM", "xterm"}, {"SHELL", "/bin/sh"}}}};
  write(cast_, h.dump() + "\n");
}

void SessionWriter::cast_event(std::uint64_t ns, std::string_view code, std::string_view data) {
  if (!cast_started()) return;
  const double t = ns > cast_start_ns_ ? static_cast<double>(ns - cast_start_ns_) / 1e9 : 0.0;
  nlohmann::json e = nlohmann::json::array({std::round(t * 1e6) / 1e6, code, data});
  write(cast_, e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

fs::path SessionWriter::part_path(std::uint64_t n) const { return dir_ / "files" / fmt::format(".part-{}", n); }

void SessionWriter::append_part(std::uint64_t n, std::string_view data) {
  std::error_code ec;
  fs::create_directories(dir_ / "files", ec);
  // Opened per write: a session may hold many files open for writing, hvtrace holds none.
  std::ofstream f(part_path(n), std::ios::binary | std::ios::app);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) ++errors_;
}

fs::path SessionWriter::finish_part(std::uint64_t n, const std::string& sha, bool cut) {
  const fs::path part = part_path(n);
  std::error_code ec;
  if (!fs::exists(part, ec)) return {};
  const fs::path dest = dir_ / "files" / (cut ? sha + ".partial" : sha);
  fs::rename(part, dest, ec);
  if (ec) {
    ++errors_;
    return {};
  }
  return dest;
}

}  // namespace hvtrace::session
