// See symbol_index.hpp.
#include "kernel/symbol_index.hpp"

#include <algorithm>

namespace hvtrace::kernel {
namespace {
bool addr_less(const Symbol& a, const Symbol& b) { return a.addr.value < b.addr.value; }
}  // namespace

SymbolIndex::SymbolIndex(std::vector<Symbol> symbols) : by_addr_(std::move(symbols)) {
  std::stable_sort(by_addr_.begin(), by_addr_.end(), addr_less);
}

std::span<const Symbol> SymbolIndex::at(GVA va) const {
  const Symbol key{{}, '?', va};
  auto [lo, hi] = std::equal_range(by_addr_.begin(), by_addr_.end(), key, addr_less);
  return {lo, hi};
}

std::optional<GVA> SymbolIndex::next_after(GVA va) const {
  const Symbol key{{}, '?', va};
  auto it = std::upper_bound(by_addr_.begin(), by_addr_.end(), key, addr_less);
  if (it == by_addr_.end()) return std::nullopt;
  return it->addr;
}

}  // namespace hvtrace::kernel
