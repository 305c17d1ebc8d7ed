// hvtrace's one error policy. Library functions that can fail return Result<T>: either a value or
// an Error whose message a person can act on ("reading task_struct at 0x... +0x4e8: PML4E not
// present (cr3=0x...)"). Errors gain context as they travel up (with_context). Unrecoverable user
// errors in the CLI are thrown as UserError and caught once in main.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace hvtrace {

struct Error {
  std::string message;
};

// Thrown only for errors the user must fix (bad flag, missing VM); caught in main, exit code 2.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[nodiscard]] Error make_error(fmt::format_string<Args...> f, Args&&... args) {
  return Error{fmt::format(f, std::forward<Args>(args)...)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}      // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return checked(); }
  const T& value() const& { return const_cast<Result*>(this)->checked(); }
  T&& value() && { return std::move(checked()); }
  T& operator*() & { return checked(); }
  const T& operator*() const& { return const_cast<Result*>(this)->checked(); }
  T* operator->() { return &checked(); }
  const T* operator->() const { return &const_cast<Result*>(this)->checked(); }

  [[nodiscard]] const Error& error() const& { return std::get<1>(v_); }
  [[nodiscard]] Error&& error() && { return std::get<1>(std::move(v_)); }

  // Prefix the error with what the caller was doing; the value passes through unchanged.
  Result with_context(std::string_view what) && {
    if (!ok()) std::get<1>(v_).message = fmt::format("{}: {}", what, std::get<1>(v_).message);
    return std::move(*this);
  }

 private:
  T& checked() {
    if (!ok()) throw std::logic_error("Result::value() on an error: " + std::get<1>(v_).message);
    return std::get<0>(v_);
  }
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)
  [[nodiscard]] bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  [[nodiscard]] const Error& error() const& { return err_; }
  Result with_context(std::string_view what) && {
    if (!ok_) err_.message = fmt::format("{}: {}", what, err_.message);
    return std::move(*this);
  }

 private:
  Error err_{};
  bool ok_ = true;
};

// Turn an error into UserError at the CLI boundary.
template <typename T>
T value_or_throw(Result<T> r) {
  if (!r) throw UserError(r.error().message);
  if constexpr (!std::is_void_v<T>) return std::move(r).value();
}

}  // namespace hvtrace

// Propagate an error from an expression returning Result<...>.
#define HVTRACE_TRY(expr)                                          \
  do {                                                             \
    if (auto hvtrace_try_r_ = (expr); !hvtrace_try_r_.ok())        \
      return std::move(hvtrace_try_r_).error();                   \
  } while (0)
