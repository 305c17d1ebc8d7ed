// The monitoring side's reading of the rings over hostile bytes: decode_record on arbitrary
// records, and a whole rings file (shm header, ring header, data area) mapped and polled through
// EventReader with fuzzed header fields, head/tail counters, record sizes, PADs and LOST records.
// The producer runs inside QEMU and copies bytes a hostile guest chose; nothing may crash, read
// past the mapping or loop for ever. First byte: 0 = one record, else a rings file.
#include "events/event_reader.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <span>
#include <string>
#include <vector>

using namespace hvtrace;

namespace {

constexpr std::uint32_t kData = 4096;   // smallest ring EventReader accepts
constexpr bool file_size_ok(std::uint64_t n) { return n % abi::kPageSize == 0; }

// A rings file of one ring laid out as monitor/channel.cpp create_rings does, then the input
// copied over it from the ring header on: header fields first, the data area after.
bool poll_file(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/hvtrace-event-decode-fuzz-" + std::to_string(getpid()) + ".rings";
  const std::uint64_t file_size = abi::shm_file_size(1, kData);
  // Page-aligned, as the mapped file is: the headers are alignas(kPageSize) (a byte vector's
  // buffer is not, and UBSan's alignment check then fails the harness, not the reader).
  struct alignas(abi::kPageSize) Page {
    std::uint8_t b[abi::kPageSize];
  };
  static_assert(file_size_ok(abi::shm_file_size(1, kData)));
  std::vector<Page> pages(file_size / abi::kPageSize, Page{});
  const std::span<std::uint8_t> img(reinterpret_cast<std::uint8_t*>(pages.data()), file_size);
  auto* sh = reinterpret_cast<abi::ShmHeader*>(img.data());
  sh->magic = abi::kShmMagic;
  sh->abi_version = abi::kAbiVersion;
  sh->header_size = sizeof(abi::ShmHeader);
  sh->ring_header_size = sizeof(abi::RingHeader);
  sh->n_rings = 1;
  sh->file_size = file_size;
  sh->ready = 1;
  auto* rh = reinterpret_cast<abi::RingHeader*>(img.data() + abi::kPageSize);
  abi::init_ring(*rh, 0, kData, 2 * abi::kPageSize);
  // Input: [head u64][tail u64][data bytes...]; then any leftover patches the ring header.
  std::uint64_t head = 0, tail = 0;
  if (size >= 16) {
    std::memcpy(&head, data, 8);
    std::memcpy(&tail, data + 8, 8);
    data += 16;
    size -= 16;
  }
  rh->head = head;
  rh->tail = tail;
  const std::size_t n = std::min<std::size_t>(size, kData);
  std::memcpy(img.data() + 2 * abi::kPageSize, data, n);
  if (size > kData) {   // the rest overwrites the start of the ring header (vcpu, data_size, offsets)
    const std::size_t m = std::min<std::size_t>(size - kData, 64);
    std::memcpy(reinterpret_cast<std::uint8_t*>(rh), data + kData, m);
  }
  unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return false;
  const bool ok = write(fd, img.data(), img.size()) == static_cast<ssize_t>(img.size());
  ::close(fd);
  if (ok) {
    auto r = events::EventReader::open(path);
    if (r) {
      (*r)->set_auto_ack(false);
      std::size_t seen = 0;
      for (int round = 0; round < 4; ++round) {
        auto got = (*r)->poll([&](const events::Event& e) { seen += e.captures.size() + 1; }, 4096);
        if (!got || *got == 0) break;
      }
      (void)(*r)->stats(0);
    }
  }
  unlink(path.c_str());
  return ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  if (data[0] == 0) {
    auto e = events::decode_record(data + 1, size - 1);
    if (e) {
      for (const auto& c : e->captures) (void)c.argv();
      (void)e->dtb();
    }
    return 0;
  }
  (void)poll_file(data + 1, size - 1);
  return 0;
}
