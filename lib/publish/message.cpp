#include "publish/message.hpp"

#include "common/result.hpp"

#include <fmt/core.h>

#include <charconv>

namespace hvtrace::publish {

const std::string* Message::header(std::string_view key) const {
  for (const auto& [k, v] : headers)
    if (k == key) return &v;
  return nullptr;
}

std::string Message::msg_id() const {
  const auto* v = header(kMsgIdHeader);
  return v ? *v : std::string();
}

std::size_t Message::bytes() const {
  std::size_t n = subject.size() + data.size();
  for (const auto& [k, v] : headers) n += k.size() + v.size() + 4;
  return n;
}

std::string sanitize_token(std::string_view s) {
  std::string out;
  out.reserve(std::min(s.size(), kMaxTokenBytes));
  for (const char ch : s) {
    if (out.size() >= kMaxTokenBytes) break;
    const auto c = static_cast<unsigned char>(ch);
    const bool bad = c <= 0x20 || c >= 0x7f || c == '.' || c == '*' || c == '>';
    out.push_back(bad ? '_' : ch);
  }
  if (out.empty()) out = "_";
  return out;
}

bool valid_sid(std::string_view sid) {
  if (sid.empty() || sid.size() > kMaxTokenBytes) return false;
  for (const char c : sid)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-')) return false;
  return true;
}

std::string event_subject(std::string_view sensor, std::string_view vm, std::string_view eventid) {
  std::string s = "hvtrace." + sanitize_token(sensor) + "." + sanitize_token(vm);
  // At most 8 tokens of the event id: a subject stays short whatever the id.
  int tokens = 0;
  std::size_t pos = 0;
  do {
    const std::size_t dot = eventid.find('.', pos);
    const std::string_view tok = eventid.substr(pos, dot == std::string_view::npos ? std::string_view::npos : dot - pos);
    if (++tokens > 8) break;
    s += "." + sanitize_token(tok);
    pos = dot == std::string_view::npos ? dot : dot + 1;
  } while (pos != std::string_view::npos);
  return s;
}

bool publishable_file(std::string_view name) { return name == "transcript.txt" || name == "session.cast"; }

std::string file_subject(std::string_view sensor, std::string_view vm, std::string_view sid, std::string_view name) {
  const std::string_view base = name.substr(0, name.find('.'));   // transcript, session
  return fmt::format("hvtrace.{}.{}.file.{}.{}", sanitize_token(sensor), sanitize_token(vm), sanitize_token(sid),
                     sanitize_token(base == "session" ? "cast" : base));
}

std::optional<Message> event_message(const nlohmann::json& event, std::string_view vm, std::uint64_t seq) {
  if (!event.is_object()) return std::nullopt;
  const auto sid_it = event.find("session");
  if (sid_it == event.end() || !sid_it->is_string() || !valid_sid(sid_it->get_ref<const std::string&>())) return std::nullopt;
  const std::string sid = *sid_it;
  std::string sensor, eventid;
  if (auto it = event.find("sensor"); it != event.end() && it->is_string()) sensor = *it;
  if (auto it = event.find("eventid"); it != event.end() && it->is_string()) eventid = *it;
  Message m;
  m.subject = event_subject(sensor, vm, eventid);
  // The object plus "vm", without copying it: its serialization with the field spliced in (the
  // collector parses the body and drops "vm", so where the field sits does not matter).
  m.data = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (event.contains("vm")) {
    nlohmann::json body = event;
    body["vm"] = vm;
    m.data = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    m.data.pop_back();   // '}'
    if (m.data.size() > 1) m.data += ',';
    m.data += "\"vm\":" + nlohmann::json(vm).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "}";
  }
  m.headers = {{kMsgIdHeader, fmt::format("{}:{}", sid, seq)},
               {kKindHeader, "event"},
               {kSessionHeader, sid},
               {kSeqHeader, std::to_string(seq)}};
  return m;
}

std::optional<std::string> event_line(std::string_view body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  j.erase("vm");
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::vector<Message> file_messages(std::string_view sensor, std::string_view vm, std::string_view sid, std::string_view name,
                                   std::string_view content, std::size_t chunk_bytes) {
  if (chunk_bytes == 0) chunk_bytes = kDefaultChunkBytes;
  std::vector<Message> out;
  const std::string subject = file_subject(sensor, vm, sid, name);
  std::size_t off = 0, chunk = 0;
  do {
    const std::size_t n = std::min(chunk_bytes, content.size() - off);
    const bool last = off + n == content.size();
    Message m;
    m.subject = subject;
    m.data.assign(content.substr(off, n));
    m.headers = {{kMsgIdHeader, fmt::format("{}:{}:{}", sid, name, chunk)},
                 {kKindHeader, "file"},
                 {kSessionHeader, std::string(sid)},
                 {kFileHeader, std::string(name)},
                 {kChunkHeader, std::to_string(chunk)},
                 {kOffsetHeader, std::to_string(off)}};
    if (last) {
      m.headers.emplace_back(kLastHeader, "1");
      m.headers.emplace_back(kSizeHeader, std::to_string(content.size()));
    }
    out.push_back(std::move(m));
    off += n;
    ++chunk;
  } while (off < content.size());
  return out;
}

std::vector<std::string> parse_urls(std::string_view list) {
  std::vector<std::string> urls;
  if (list.empty()) throw UserError("--publish/--from: give a NATS URL, e.g. nats://127.0.0.1:4222");
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const std::size_t comma = list.find(',', pos);
    std::string_view u = list.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    pos = comma == std::string_view::npos ? list.size() + 1 : comma + 1;
    const auto bad = [&](const std::string& why) {
      return UserError(fmt::format("malformed NATS URL '{}': {} (expected nats://HOST:PORT[,nats://HOST:PORT...])", u, why));
    };
    const std::size_t sep = u.find("://");
    if (sep == std::string_view::npos) throw bad("no scheme");
    const std::string_view scheme = u.substr(0, sep);
    if (scheme != "nats" && scheme != "tls") throw bad(fmt::format("scheme '{}' is not nats or tls", scheme));
    std::string_view hostport = u.substr(sep + 3);
    if (const auto at = hostport.rfind('@'); at != std::string_view::npos) hostport = hostport.substr(at + 1);   // user:pass@
    if (!hostport.empty() && hostport.back() == '/') hostport.remove_suffix(1);
    if (hostport.empty()) throw bad("no host");
    std::string_view host = hostport, port;
    if (hostport.front() == '[') {   // [v6]:port
      const auto close = hostport.find(']');
      if (close == std::string_view::npos) throw bad("unclosed '['");
      host = hostport.substr(0, close + 1);
      if (close + 1 < hostport.size()) {
        if (hostport[close + 1] != ':') throw bad("junk after ']'");
        port = hostport.substr(close + 2);
      }
    } else if (const auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
      host = hostport.substr(0, colon);
      port = hostport.substr(colon + 1);
    }
    if (host.empty()) throw bad("no host");
    for (const char c : host)
      if (c == '/' || c == ' ' || c == '?' || c == '#' || static_cast<unsigned char>(c) < 0x21) throw bad("bad character in host");
    if (!port.empty() || hostport.back() == ':') {
      unsigned p = 0;
      const auto r = std::from_chars(port.data(), port.data() + port.size(), p);
      if (port.empty() || r.ec != std::errc() || r.ptr != port.data() + port.size() || p == 0 || p > 65535)
        throw bad("port must be 1-65535");
    }
    urls.emplace_back(u);
  }
  return urls;
}

}  // namespace hvtrace::publish
