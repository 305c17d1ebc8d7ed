// Strong types for values that are easy to swap by mistake: guest virtual vs guest physical
// addresses, CR3 values vs the DTB they carry, pids. Each wraps a plain integer, compares and
// hashes like one, and converts only explicitly.
#pragma once

#include <fmt/format.h>

#include <compare>
#include <cstdint>
#include <functional>

namespace hvtrace {

template <typename Tag, typename Rep = std::uint64_t>
struct Strong {
  Rep value{};
  constexpr Strong() = default;
  constexpr explicit Strong(Rep v) : value(v) {}
  constexpr auto operator<=>(const Strong&) const = default;
};

struct GuestVirtTag {};
struct GuestPhysTag {};
struct Cr3Tag {};
struct DtbTag {};
struct PidTag {};

using GVA = Strong<GuestVirtTag>;          // guest virtual address
using GPA = Strong<GuestPhysTag>;          // guest physical address
using Cr3 = Strong<Cr3Tag>;                // raw CR3 register value (PCID and flag bits included)
using Dtb = Strong<DtbTag>;                // page-table base: CR3 with PCID, bit 12 (PTI) and bit 63 masked
using Pid = Strong<PidTag, std::int32_t>;

// Bits 0-11 hold the PCID (or PWT/PCD), bit 12 selects the PTI user/kernel half, bit 63 is the
// "no flush" hint on writes. Two CR3 values name the same address space iff their DTBs are equal.
constexpr std::uint64_t kDtbMask = 0x7fff'ffff'ffff'e000ULL;
constexpr Dtb dtb_of(Cr3 cr3) { return Dtb{cr3.value & kDtbMask}; }

}  // namespace hvtrace

template <typename Tag, typename Rep>
struct std::hash<hvtrace::Strong<Tag, Rep>> {
  std::size_t operator()(const hvtrace::Strong<Tag, Rep>& s) const noexcept { return std::hash<Rep>{}(s.value); }
};

template <typename Tag, typename Rep>
struct fmt::formatter<hvtrace::Strong<Tag, Rep>> : fmt::formatter<Rep> {
  template <typename Ctx>
  auto format(const hvtrace::Strong<Tag, Rep>& s, Ctx& ctx) const {
    if constexpr (std::is_same_v<Rep, std::uint64_t>) return fmt::format_to(ctx.out(), "{:#x}", s.value);
    else return fmt::formatter<Rep>::format(s.value, ctx);
  }
};
