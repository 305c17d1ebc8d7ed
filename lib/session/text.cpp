#include "session/text.hpp"

#include <fmt/format.h>

#include <ctime>

namespace hvtrace::session {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";   // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i]: > 0 valid, 0 invalid, -1 a valid prefix
// cut off by the end of the input.
int utf8_seq(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  int n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) n = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (i + static_cast<std::size_t>(k) >= s.size()) return -1;
    const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if (b < lo || b > hi) return 0;
    lo = 0x80;
    hi = 0xBF;
  }
  return n;
}

// Appends the valid part of `in` to out; returns the index of a cut-off tail (in.size() if none).
std::size_t append_valid(std::string_view in, std::string& out, bool keep_tail) {
  std::size_t i = 0;
  while (i < in.size()) {
    const int n = utf8_seq(in, i);
    if (n > 0) {
      out.append(in.substr(i, static_cast<std::size_t>(n)));
      i += static_cast<std::size_t>(n);
    } else if (n < 0 && keep_tail) {
      return i;
    } else {
      out.append(kReplacement);
      ++i;
    }
  }
  return in.size();
}

bool is_cont(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

std::string sanitize_utf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  append_valid(in, out, false);
  return out;
}

std::string transcript_line(std::string_view line) {
  std::size_t control = 0;
  for (const unsigned char c : line)
    if ((c < 0x20 && c != '\t' && c != 0x1b) || c == 0x7f) ++control;
  const std::string text = sanitize_utf8(line);
  std::size_t replaced = 0;
  for (std::size_t p = text.find("\xEF\xBF\xBD"); p != std::string::npos; p = text.find("\xEF\xBF\xBD", p + 3)) ++replaced;
  if ((control + replaced) * 10 > line.size()) return fmt::format("[{} bytes of binary output]", line.size());
  std::string out;
  out.reserve(text.size());
  for (const unsigned char c : text) {
    if ((c < 0x20 && c != '\t' && c != 0x1b) || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out;
}

std::string Utf8Stream::feed(std::string_view in) {
  std::string out;
  std::string joined;
  if (!pending_.empty()) {
    joined = pending_ + std::string(in);
    in = joined;
    pending_.clear();
  }
  out.reserve(in.size());
  const std::size_t tail = append_valid(in, out, true);
  pending_.assign(in.substr(tail));   // a prefix of one sequence: at most 3 bytes
  return out;
}

std::string Utf8Stream::flush() {
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

std::string iso_time(std::int64_t unix_ns) {
  if (unix_ns < 0) unix_ns = 0;
  const std::time_t secs = static_cast<std::time_t>(unix_ns / 1'000'000'000);
  const auto micros = (unix_ns % 1'000'000'000) / 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
}

// ---- LineEditor ----

void LineEditor::insert(char c, std::uint64_t& dropped) {
  if (buf_.size() >= max_) {
    truncated_ = true;
    ++dropped;
    return;
  }
  buf_.insert(buf_.begin() + static_cast<std::ptrdiff_t>(cur_), c);
  ++cur_;
}

void LineEditor::erase_before() {
  if (cur_ == 0) return;
  std::size_t start = cur_ - 1;
  while (start > 0 && is_cont(buf_[start])) --start;
  buf_.erase(start, cur_ - start);
  cur_ = start;
}

void LineEditor::erase_at() {
  if (cur_ >= buf_.size()) return;
  std::size_t end = cur_ + 1;
  while (end < buf_.size() && is_cont(buf_[end])) ++end;
  buf_.erase(cur_, end - cur_);
}

void LineEditor::recall(int dir) {
  if (dir < 0 && hist_pos_ > 0) {
    --hist_pos_;
  } else if (dir > 0 && hist_pos_ < history_.size()) {
    ++hist_pos_;
  } else {
    return;
  }
  buf_ = hist_pos_ < history_.size() ? history_[hist_pos_] : std::string();
  cur_ = buf_.size();
}

void LineEditor::apply_csi(std::string_view params, char final) {
  switch (final) {
    case 'A': recall(-1); break;
    case 'B': recall(+1); break;
    case 'C':
      if (cur_ < buf_.size()) {
        ++cur_;
        while (cur_ < buf_.size() && is_cont(buf_[cur_])) ++cur_;
      }
      break;
    case 'D':
      if (cur_ > 0) {
        --cur_;
        while (cur_ > 0 && is_cont(buf_[cur_])) --cur_;
      }
      break;
    case 'H': cur_ = 0; break;
    case 'F': cur_ = buf_.size(); break;
    case '~':
      if (params == "1" || params == "7") cur_ = 0;
      else if (params == "4" || params == "8") cur_ = buf_.size();
      else if (params == "3") erase_at();
      break;
    default: break;   // other sequences (function keys, bracketed paste marks) change nothing
  }
}

std::uint64_t LineEditor::feed(std::string_view in, const std::function<void(Line)>& done) {
  std::uint64_t dropped = 0;
  for (const char ch : in) {
    const auto c = static_cast<unsigned char>(ch);
    const bool was_cr = last_cr_;
    last_cr_ = false;
    switch (esc_) {
      case Esc::kEsc:
        if (c == '[') { esc_ = Esc::kCsi; esc_params_.clear(); }
        else if (c == 'O') esc_ = Esc::kSs3;
        else if (c == ']' || c == 'P' || c == '_' || c == '^' || c == 'X') esc_ = Esc::kString;
        else {
          esc_ = Esc::kNone;
          if (c == 0x7f || c == 0x08) {   // Alt-Backspace: erase a word, as Ctrl-W
            while (cur_ > 0 && buf_[cur_ - 1] == ' ') erase_before();
            while (cur_ > 0 && buf_[cur_ - 1] != ' ') erase_before();
          }
        }
        continue;
      case Esc::kCsi:
        if (c >= 0x40 && c <= 0x7e) {
          esc_ = Esc::kNone;
          apply_csi(esc_params_, static_cast<char>(c));
        } else if (esc_params_.size() < 32) {
          esc_params_.push_back(static_cast<char>(c));
        }
        continue;
      case Esc::kSs3:
        esc_ = Esc::kNone;
        apply_csi("", static_cast<char>(c));
        continue;
      case Esc::kString:
        if (c == 0x07 || c == 0x1b || c == 0x9c) esc_ = Esc::kNone;   // BEL or ST ends it
        continue;
      case Esc::kNone: break;
    }
    switch (c) {
      case 0x1b: esc_ = Esc::kEsc; break;
      case '\r':
      case '\n': {
        if (c == '\n' && was_cr) break;   // \r\n: one Enter
        last_cr_ = (c == '\r');
        Line l{std::move(buf_), truncated_};
        buf_.clear();
        cur_ = 0;
        truncated_ = false;
        if (!l.text.empty() && max_history_ > 0) {
          if (history_.size() >= max_history_) history_.pop_front();
          history_.push_back(l.text);
        }
        hist_pos_ = history_.size();
        done(std::move(l));
        break;
      }
      case 0x7f:
      case 0x08: erase_before(); break;
      case 0x15:   // Ctrl-U: kill back to the start of the line
        buf_.erase(0, cur_);
        cur_ = 0;
        break;
      case 0x17:   // Ctrl-W: the word before the cursor (and the blanks after it)
        while (cur_ > 0 && (buf_[cur_ - 1] == ' ' || buf_[cur_ - 1] == '\t')) erase_before();
        while (cur_ > 0 && buf_[cur_ - 1] != ' ' && buf_[cur_ - 1] != '\t') erase_before();
        break;
      case 0x0b: buf_.erase(cur_); break;   // Ctrl-K
      case 0x01: cur_ = 0; break;           // Ctrl-A
      case 0x05: cur_ = buf_.size(); break; // Ctrl-E
      case 0x02: apply_csi("", 'D'); break; // Ctrl-B
      case 0x06: apply_csi("", 'C'); break; // Ctrl-F
      case 0x10: recall(-1); break;         // Ctrl-P
      case 0x0e: recall(+1); break;         // Ctrl-N
      case 0x04: erase_at(); break;         // Ctrl-D (on an empty line: EOF, nothing to record)
      case 0x03:                            // Ctrl-C: the line is abandoned
        buf_.clear();
        cur_ = 0;
        truncated_ = false;
        hist_pos_ = history_.size();
        break;
      case '\t': insert('\t', dropped); break;
      default:
        if (c >= 0x20) insert(static_cast<char>(c), dropped);
        break;   // other control bytes (Ctrl-L, Ctrl-Z ...) edit nothing
    }
  }
  return dropped;
}

// ---- ScreenLines ----

void ScreenLines::feed(std::string_view in, const std::function<void(const std::string&)>& line) {
  for (const char ch : in) {
    const auto c = static_cast<unsigned char>(ch);
    if (esc_ != Esc::kNone) {
      if (++esc_len_ > 256) esc_ = Esc::kNone;   // a runaway sequence: give up on it
      switch (esc_) {
        case Esc::kEsc:
          if (c == '[') esc_ = Esc::kCsi;
          else if (c == ']' || c == 'P' || c == '_' || c == '^' || c == 'X') esc_ = Esc::kString;
          else if (c < 0x20 || c > 0x2f) esc_ = Esc::kNone;   // 0x20-0x2f: intermediates, wait for the final
          break;
        case Esc::kCsi:
          if (c >= 0x40 && c <= 0x7e) {
            esc_ = Esc::kNone;
            if (c == 'K' && col_ < cur_.size()) cur_.resize(col_);   // erase to end of line
          }
          break;
        case Esc::kString:
          if (c == 0x07) esc_ = Esc::kNone;
          else if (c == 0x1b) esc_ = Esc::kStringEsc;
          break;
        case Esc::kStringEsc: esc_ = Esc::kNone; break;
        case Esc::kNone: break;
      }
      continue;
    }
    switch (c) {
      case 0x1b:
        esc_ = Esc::kEsc;
        esc_len_ = 0;
        break;
      case '\n': {
        std::string l = cur_;
        while (!l.empty() && l.back() == ' ') l.pop_back();
        l = sanitize_utf8(l);
        if (cut_) l += fmt::format(" [hvtrace: line cut at {} bytes]", max_);
        drop_partial();
        line(l);
        break;
      }
      case '\r': col_ = 0; break;
      case 0x08:
        if (col_ > 0) --col_;
        break;
      default:
        if (c < 0x20 && c != '\t') break;   // BEL and other controls show nothing
        if (c == 0x7f) break;
        if (col_ < cur_.size()) {
          cur_[col_++] = static_cast<char>(c);
        } else if (cur_.size() < max_) {
          cur_.push_back(static_cast<char>(c));
          ++col_;
        } else {
          cut_ = true;
        }
        break;
    }
  }
}

}  // namespace hvtrace::session
