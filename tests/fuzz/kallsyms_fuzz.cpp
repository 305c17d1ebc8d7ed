// kallsyms location and decoding over hostile bytes: no crash, no hang. Half the inputs are raw
// RAM; the other half are XOR patches over valid tables in one of the layouts (Linux <= 6.3 with
// or without seqs_of_names, >= 6.4; absolute per-CPU rule or not), so the fuzzer works near the
// format: lying counts, markers, token indexes, name lengths, offsets, relative bases.
#include "kernel/kallsyms.hpp"

#include <cstring>

using namespace hvtrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  mem::FakeMem m(4 << 20);
  if ((data[0] & 1) == 0) {
    (void)m.write(GPA{0x1000}, std::as_bytes(std::span(data + 1, std::min<std::size_t>(size - 1, 3 << 20))));
  } else {
    std::vector<kernel::Symbol> syms;
    syms.push_back({"current_task", 'D', GVA{0x1fbc0}});
    for (int i = 0; i < 300; ++i) syms.push_back({"sym_t__" + std::to_string(i), 'T', GVA{0xffffffff81000000ULL + 16ULL * static_cast<unsigned>(i)}});
    const auto layout = (data[0] & 4) != 0 ? kernel::KallsymsLayout::kTokensFirst : kernel::KallsymsLayout::kBaseFirst;
    const bool absolute_percpu = (data[0] & 8) == 0;
    if (!absolute_percpu) syms.erase(syms.begin());  // no per-CPU symbol below relative_base then
    auto t = kernel::write_kallsyms_for_test(m, GPA{0x10000}, syms, 0xffffffff81000000ULL, (data[0] & 2) != 0, layout,
                                             absolute_percpu);
    if (!t) return 0;
    std::vector<std::byte> region(t->span_end() - t->span_begin());
    (void)m.read(GPA{t->span_begin()}, region);
    // Patches: (u16 position scaled over the region, byte to XOR).
    for (std::size_t i = 1; i + 2 < size; i += 3) {
      std::uint16_t pos = 0;
      std::memcpy(&pos, data + i, 2);
      const std::size_t at = static_cast<std::size_t>(pos) * region.size() / 65536;
      region[at] ^= std::byte{data[i + 2]};
    }
    (void)m.write(GPA{t->span_begin()}, region);
  }
  auto t = kernel::locate_kallsyms(m);
  if (t) {
    (void)kernel::decode_kallsyms(m, *t);
    (void)kernel::validate_kallsyms_at(m, t->relative_base_at, t->token_table);
  }
  return 0;
}
