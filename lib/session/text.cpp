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

// How many U+FFFD (what sanitize_utf8 puts for each invalid byte) a text holds.
std::size_t replacement_chars(std::string_view text) {
  std::size_t n = 0;
  for (std::size_t p = text.find("\xEF\xBF\xBD"); p != std::string_view::npos; p = text.find("\xEF\xBF\xBD", p + 3)) ++n;
  return n;
}

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
  if ((control + replacement_chars(text)) * 10 > line.size()) return fmt::format("[{} bytes of binary output]", line.size());
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

// ---- EscParser ----

EscParser::Step EscParser::step(unsigned char c) {
  if (state_ == State::kNone) {
    if (c != 0x1b) return Step::kText;
    state_ = State::kEsc;
    len_ = 0;
    return Step::kInside;
  }
  if (++len_ > 256) {   // a runaway sequence: give up on it
    state_ = State::kNone;
    return Step::kInside;
  }
  switch (state_) {
    case State::kEsc:
      if (c == '[') {
        state_ = State::kCsi;
        params_.clear();
      } else if (c == ']' || c == 'P' || c == '_' || c == '^' || c == 'X') {
        state_ = State::kString;
      } else if (c < 0x20 || c > 0x2f) {
        state_ = State::kNone;   // 0x20-0x2f: intermediates (ESC ( B), wait for the final
      }
      break;
    case State::kCsi:
      if (c >= 0x40 && c <= 0x7e) {
        state_ = State::kNone;
        return Step::kCsi;
      }
      if (params_.size() < 32) params_.push_back(static_cast<char>(c));
      break;
    case State::kString:
      if (c == 0x07) state_ = State::kNone;
      else if (c == 0x1b) state_ = State::kStringEsc;
      break;
    case State::kStringEsc: state_ = State::kNone; break;
    case State::kNone: break;
  }
  return Step::kInside;
}

// ---- EchoLine ----

namespace {

// UTF-8 of cells [from, to) of a row.
std::string cells_utf8(std::u32string_view cells) {
  std::string out;
  out.reserve(cells.size());
  for (const char32_t c : cells) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

constexpr char32_t kReplacementChar = 0xFFFD;

}  // namespace

void EchoLine::put(char32_t c) {
  if (lost_) return;
  if (cur_ >= max_) {
    lost_ = true;
    return;
  }
  if (cur_ > row_.size()) row_.resize(cur_, U' ');
  if (cur_ == row_.size()) row_.push_back(c);
  else row_[cur_] = c;
  ++cur_;
  wrap_pending_ = cur_ % width_ == 0;
}

unsigned EchoLine::param(std::size_t i, unsigned dflt) const {
  std::size_t field = 0;
  unsigned v = 0;
  bool any = false;
  for (const char c : esc_.params()) {
    if (c == ';') {
      if (field == i) break;
      ++field;
      v = 0;
      any = false;
    } else if (field == i && c >= '0' && c <= '9') {
      v = std::min(v * 10 + static_cast<unsigned>(c - '0'), 100000u);
      any = true;
    }
  }
  return field == i && any && v != 0 ? v : dflt;
}

void EchoLine::csi(char final) {
  if (!esc_.params().empty() && (esc_.params()[0] == '?' || esc_.params()[0] == '>' || esc_.params()[0] == '=')) return;
  // The cursor's visual row and column (a cursor waiting to wrap is still on the row it filled).
  if (lost_ && final != 'H' && final != 'f') return;   // the row is not known until the next one
  const std::size_t at = wrap_pending_ && cur_ > 0 ? cur_ - 1 : cur_;
  const std::size_t vstart = at - at % width_, col = at % width_;
  const std::size_t vend = vstart + width_;   // one past the visual row
  const bool was_pending = wrap_pending_;
  wrap_pending_ = false;
  switch (final) {
    case 'A': {   // up: inside a wrapped row, or out of it (the row is no longer known)
      const std::size_t n = param(0, 1);
      if (n * width_ > vstart) lost_ = true;
      else cur_ = at - n * width_;
      break;
    }
    case 'B': cur_ = std::min<std::size_t>(at + static_cast<std::size_t>(param(0, 1)) * width_, max_); break;
    case 'C': cur_ = vstart + std::min<std::size_t>(col + param(0, 1), width_ - 1); break;
    case 'D': cur_ = vstart + col - std::min<std::size_t>(col, param(0, 1)); break;
    case 'G': cur_ = vstart + std::min<std::size_t>(param(0, 1) - 1, width_ - 1); break;
    case 'H':
    case 'f':   // an absolute position (Ctrl-L clears the screen): a fresh row
      row_.clear();
      lost_ = false;
      cur_ = std::min<std::size_t>(param(1, 1) - 1, width_ - 1);
      break;
    case 'J':
      if (param(0, 0) == 0) {
        if (cur_ < row_.size()) row_.resize(cur_);
      } else {
        row_.clear();   // the whole screen: blanks
      }
      break;
    case 'K': {
      const unsigned mode = param(0, 0);
      const std::size_t from = mode == 0 ? at : vstart;
      const std::size_t to = mode == 1 ? at + 1 : vend;
      if (to >= row_.size()) {
        if (from < row_.size()) row_.resize(from);
      } else {
        for (std::size_t i = from; i < to; ++i) row_[i] = U' ';
      }
      cur_ = at;
      break;
    }
    case 'X':
      for (std::size_t i = at; i < std::min<std::size_t>(row_.size(), at + param(0, 1)) && i < vend; ++i) row_[i] = U' ';
      cur_ = at;
      break;
    case 'P': {   // delete characters: the rest of the visual row moves left (O(width))
      cur_ = at;
      if (at >= row_.size()) break;
      const std::size_t end = std::min(vend, row_.size());
      const std::size_t n = std::min<std::size_t>(param(0, 1), end - at);
      std::move(row_.begin() + static_cast<std::ptrdiff_t>(at + n), row_.begin() + static_cast<std::ptrdiff_t>(end),
                row_.begin() + static_cast<std::ptrdiff_t>(at));
      if (end == row_.size()) row_.resize(end - n);
      else std::fill(row_.begin() + static_cast<std::ptrdiff_t>(end - n), row_.begin() + static_cast<std::ptrdiff_t>(end), U' ');
      break;
    }
    case '@': {   // insert blanks: the rest of the visual row moves right, what passes its end is gone
      cur_ = at;
      if (at >= row_.size()) break;
      const std::size_t n = std::min<std::size_t>(param(0, 1), vend - at);
      const std::size_t end = std::min(vend, std::max(row_.size(), std::min(vend, row_.size() + n)));
      if (row_.size() < end) row_.resize(end, U' ');
      std::move_backward(row_.begin() + static_cast<std::ptrdiff_t>(at), row_.begin() + static_cast<std::ptrdiff_t>(end - n),
                         row_.begin() + static_cast<std::ptrdiff_t>(end));
      std::fill(row_.begin() + static_cast<std::ptrdiff_t>(at), row_.begin() + static_cast<std::ptrdiff_t>(at + n), U' ');
      break;
    }
    default:   // colours (m) and the rest: nothing for the row, a pending wrap stays pending
      wrap_pending_ = was_pending;
      return;
  }
  if (cur_ >= max_) lost_ = true;
}

void EchoLine::end_row(const std::function<void()>& row_end) {
  if (row_end) row_end();
  row_.clear();
  lost_ = false;
}

void EchoLine::feed(std::string_view out, const std::function<void()>& row_end) {
  for (const char ch : out) {
    const auto c = static_cast<unsigned char>(ch);
    if (const auto st = esc_.step(c); st != EscParser::Step::kText) {
      if (st == EscParser::Step::kCsi) csi(static_cast<char>(c));
      continue;
    }
    if (utf8_need_ > 0) {
      if (is_cont(ch)) {
        utf8_.push_back(ch);
        if (utf8_.size() == utf8_need_) {
          char32_t cp = kReplacementChar;
          if (utf8_seq(utf8_, 0) == static_cast<int>(utf8_need_)) {
            cp = static_cast<unsigned char>(utf8_[0]) & (0x7F >> utf8_need_);
            for (std::size_t k = 1; k < utf8_need_; ++k) cp = (cp << 6) | (static_cast<unsigned char>(utf8_[k]) & 0x3F);
          }
          put(cp);
          utf8_.clear();
          utf8_need_ = 0;
        }
        continue;
      }
      put(kReplacementChar);   // cut short: this byte starts afresh
      utf8_.clear();
      utf8_need_ = 0;
    }
    if (c >= 0x80) {
      const std::size_t need = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
      if (need == 0 || is_cont(ch)) {
        put(kReplacementChar);
      } else {
        utf8_.assign(1, ch);
        utf8_need_ = need;
      }
      continue;
    }
    switch (c) {
      case '\r': {
        const std::size_t at = wrap_pending_ && cur_ > 0 ? cur_ - 1 : cur_;
        cur_ = at - at % width_;
        wrap_pending_ = false;
        break;
      }
      case '\n': {
        const std::size_t at = wrap_pending_ && cur_ > 0 ? cur_ - 1 : cur_;
        const std::size_t next = at - at % width_ + width_;
        wrap_pending_ = false;
        if (next < row_.size() && !lost_) {   // down inside a wrapped row
          cur_ = next + at % width_;
        } else {
          end_row(row_end);
          cur_ = at % width_;
        }
        break;
      }
      case 0x08:
        if (wrap_pending_ && cur_ >= 2) cur_ -= 2;
        else if (cur_ % width_ != 0) --cur_;
        wrap_pending_ = false;
        break;
      case '\t': {
        const std::size_t at = wrap_pending_ && cur_ > 0 ? cur_ - 1 : cur_;
        const std::size_t col = at % width_;
        cur_ = at - col + std::min<std::size_t>((col / 8 + 1) * 8, width_ - 1);
        wrap_pending_ = false;
        if (cur_ >= max_) lost_ = true;
        break;
      }
      default:
        if (c >= 0x20 && c != 0x7f) put(c);
        break;   // BEL and other controls move nothing
    }
  }
}

bool EchoLine::mark_prompt() {
  prompt_.clear();
  if (lost_) return false;
  prompt_ = row_.substr(0, std::min(cur_, row_.size()));
  if (prompt_.size() < cur_) prompt_.resize(cur_, U' ');
  return !prompt_.empty();
}

std::optional<EchoLine::Text> EchoLine::line(std::size_t max_bytes) const {
  // (The cursor may be left of the prompt: the \r of the line's final \r\n, a redraw under way.)
  if (lost_ || prompt_.empty() || row_.size() < prompt_.size() || row_.compare(0, prompt_.size(), prompt_) != 0)
    return std::nullopt;
  std::size_t end = row_.size();
  while (end > prompt_.size() && end > cur_ && row_[end - 1] == U' ') --end;
  const std::size_t cursor = std::clamp(cur_, prompt_.size(), end);
  Text t;
  t.text = cells_utf8(std::u32string_view(row_).substr(prompt_.size(), end - prompt_.size()));
  t.cursor = cells_utf8(std::u32string_view(row_).substr(prompt_.size(), cursor - prompt_.size())).size();
  if (t.text.size() > max_bytes) {
    std::size_t cut = max_bytes;
    while (cut > 0 && is_cont(t.text[cut])) --cut;
    t.text.resize(cut);
    t.truncated = true;
    t.cursor = std::min(t.cursor, cut);
  }
  return t;
}

std::string EchoLine::row() const { return cells_utf8(row_); }
std::string EchoLine::prompt_text() const { return cells_utf8(prompt_); }

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
    case 'A':   // history: the shell's own may hold lines from before this session
      recall(-1);
      from_echo_ = true;
      break;
    case 'B':
      recall(+1);
      from_echo_ = true;
      break;
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

void LineEditor::reset_line() {
  buf_.clear();
  cur_ = 0;
  truncated_ = false;
  from_echo_ = false;
  line_started_ = false;
  own_prompt_ = false;
  hist_pos_ = history_.size();
}

void LineEditor::deliver(Line l, const std::function<void(Line)>& done) {
  if (!l.text.empty() && max_history_ > 0) {
    if (history_.size() >= max_history_) history_.pop_front();
    history_.push_back(l.text);
  }
  hist_pos_ = history_.size();
  done(std::move(l));
}

// The waiting line as the terminal shows it now (or as the keys made it when the row is not it).
void LineEditor::finish_waiting(const std::function<void(Line)>& done) {
  if (!waiting_) return;
  Line l = std::move(*waiting_);
  waiting_.reset();
  if (auto t = echo_.line(max_)) {
    l.text = std::move(t->text);
    l.truncated = t->truncated;
    l.from_echo = true;
    // The blank a completion appends is the shell's, not part of the command (an escaped one is).
    while (!l.text.empty() && l.text.back() == ' ' && (l.text.size() < 2 || l.text[l.text.size() - 2] != '\\'))
      l.text.pop_back();
  }
  deliver(std::move(l), done);
}

// The first key of a line: the row left of the cursor is its prompt (not when an earlier line
// still waits for its echo: the row is that line's).
void LineEditor::key_seen() {
  if (line_started_) return;
  line_started_ = true;
  own_prompt_ = !waiting_ && echo_.mark_prompt();
}

void LineEditor::sync_from_echo() {
  if (!from_echo_ || !own_prompt_ || waiting_) return;
  if (auto t = echo_.line(max_)) {
    buf_ = std::move(t->text);
    cur_ = t->cursor;
    truncated_ = t->truncated;
  }
}

void LineEditor::enter(const std::function<void(Line)>& done, std::uint64_t at, std::uint64_t at_entry) {
  Line l{std::move(buf_), truncated_, false, at, at_entry, own_prompt_ ? echo_.prompt_text() : std::string()};
  const bool wait = from_echo_ && own_prompt_;
  reset_line();
  if (waiting_) finish_waiting(done);   // typed ahead: the earlier line is what the row shows now
  if (wait) waiting_ = std::move(l);
  else deliver(std::move(l), done);
}

void LineEditor::output(std::string_view out, const std::function<void(Line)>& done) {
  echo_.feed(out, [&] { finish_waiting(done); });
  sync_from_echo();
}

void LineEditor::flush(const std::function<void(Line)>& done) { finish_waiting(done); }

std::uint64_t LineEditor::feed(std::string_view in, const std::function<void(Line)>& done, std::uint64_t at,
                               std::uint64_t at_entry) {
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
          } else if (c == '.' || c == '_' || c == '\t' || c == '<' || c == '>' || c == '*' || c == '?' || c == '/') {
            from_echo_ = true;   // Alt-. (the last argument from history), Alt-TAB, completions
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
    if (c != '\n' || !was_cr) key_seen();
    switch (c) {
      case 0x1b: esc_ = Esc::kEsc; break;
      case '\r':
      case '\n': {
        if (c == '\n' && was_cr) break;   // \r\n: one Enter
        last_cr_ = (c == '\r');
        enter(done, at, at_entry);
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
      case 0x10: apply_csi("", 'A'); break; // Ctrl-P
      case 0x0e: apply_csi("", 'B'); break; // Ctrl-N
      case 0x12:                            // Ctrl-R: history search, seen only in the echo
      case 0x19:                            // Ctrl-Y: yank what an earlier line killed
        from_echo_ = true;
        break;
      case 0x04: erase_at(); break;         // Ctrl-D (on an empty line: EOF, nothing to record)
      case 0x03: {                          // Ctrl-C: the line is abandoned
        if (waiting_) finish_waiting(done);   // a line entered before it stands
        Line l{buf_, truncated_, false, at, at_entry, own_prompt_ ? echo_.prompt_text() : std::string()};
        if (from_echo_ && own_prompt_)
          if (auto t = echo_.line(max_)) {   // what the row showed (a completion, a recalled line)
            l.text = std::move(t->text);
            l.from_echo = true;
          }
        l.abandoned = true;
        reset_line();
        done(std::move(l));
        break;
      }
      case '\t':                            // completion: the echo tells what it inserted
        insert('\t', dropped);
        from_echo_ = true;
        break;
      default:
        if (c >= 0x20) insert(static_cast<char>(c), dropped);
        // A byte of a non-ASCII character: a shell without a UTF-8 locale (or readline's
        // convert-meta) takes it for a Meta key and edits the line otherwise; the echo tells.
        if (c >= 0x80) from_echo_ = true;
        break;   // other control bytes (Ctrl-L, Ctrl-Z ...) edit nothing
    }
  }
  return dropped;
}

// ---- ScreenLines ----

void ScreenLines::feed(std::string_view in, const std::function<void(const std::string&)>& line) {
  for (const char ch : in) {
    const auto c = static_cast<unsigned char>(ch);
    if (c != '\n') ++raw_;
    if (const auto st = esc_.step(c); st != EscParser::Step::kText) {
      if (st == EscParser::Step::kCsi && c == 'K' && col_ < cur_.size()) cur_.resize(col_);   // erase to end of line
      continue;
    }
    switch (c) {
      case '\n': {
        std::string l = cur_;
        while (!l.empty() && l.back() == ' ') l.pop_back();
        l = sanitize_utf8(l);
        if (cut_) l += fmt::format(" [hvtrace: line cut at {} bytes]", max_);
        if ((hidden_ + replacement_chars(l)) * 10 > raw_) l = fmt::format("[{} bytes of binary output]", raw_);
        drop_partial();
        line(l);
        break;
      }
      case '\r': col_ = 0; break;
      case 0x08:
        if (col_ > 0) --col_;
        break;
      default:
        if ((c < 0x20 && c != '\t') || c == 0x7f) {   // BEL and other controls show nothing
          ++hidden_;
          break;
        }
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
