// Guest physical memory behind one interface. Backends: the VM's shared RAM file (mapped
// read-only, live), a raw memory dump file (offline), and an in-memory fake for tests.
// Invariants: reads never write guest memory and never grow a RAM file. Parts of a shared-memory
// RAM file the guest never touched are holes; reading a hole through a shared mapping would
// allocate a page, so hole pages are read with pread (which returns zeros without allocating)
// and scans visit only data extents (lseek SEEK_DATA/SEEK_HOLE). Every read outside RAM fails
// with a reason naming the address.
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace hvtrace::mem {

constexpr std::uint64_t kPageSize = 4096;

// A run of guest physical memory that may hold data (holes excluded).
struct Extent {
  GPA base;
  std::span<const std::byte> bytes;
};

class PhysMem {
 public:
  virtual ~PhysMem() = default;
  // Guest RAM size in bytes; valid GPAs are [0, size()) (the default guests have no PCI hole below it).
  [[nodiscard]] virtual std::uint64_t size() const = 0;
  // Copy [gpa, gpa + out.size()) into out; fails without a partial result if any byte is outside RAM.
  [[nodiscard]] virtual Result<void> read(GPA gpa, std::span<std::byte> out) const = 0;
  // Call `visit` for every extent that may hold data, in ascending address order; stop early if it
  // returns false. Extents may be large (the whole of RAM) and stay valid only during the call.
  virtual void for_each_extent(const std::function<bool(const Extent&)>& visit) const = 0;
  // A short description for messages ("RAM file /dev/shm/... (256 MiB)").
  [[nodiscard]] virtual std::string describe() const = 0;

  template <typename T>
  [[nodiscard]] Result<T> read_as(GPA gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    HVTRACE_TRY(read(gpa, std::as_writable_bytes(std::span<T, 1>(&v, 1))));
    return v;
  }
  [[nodiscard]] Result<std::uint64_t> read_u64(GPA gpa) const { return read_as<std::uint64_t>(gpa); }
};

// A file whose offset equals the guest physical address: the VM's shared RAM file (live: the
// guest keeps writing while we read) or a dump saved from it.
class FileMem final : public PhysMem {
 public:
  enum class Kind { kSharedRam, kDump };
  [[nodiscard]] static Result<std::unique_ptr<FileMem>> open(const std::filesystem::path& path, Kind kind);
  ~FileMem() override;
  FileMem(const FileMem&) = delete;
  FileMem& operator=(const FileMem&) = delete;

  [[nodiscard]] std::uint64_t size() const override { return size_; }
  [[nodiscard]] Result<void> read(GPA gpa, std::span<std::byte> out) const override;
  void for_each_extent(const std::function<bool(const Extent&)>& visit) const override;
  [[nodiscard]] std::string describe() const override;
  // Re-learn which pages hold data (the guest touches new pages as it runs). Reads stay correct
  // without it (unknown pages go through pread); it only makes them faster.
  void refresh_extents();

 private:
  FileMem() = default;
  [[nodiscard]] bool page_is_data(std::uint64_t page) const {
    return page < data_pages_.size() && data_pages_[page];
  }
  std::filesystem::path path_;
  Kind kind_ = Kind::kSharedRam;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  const std::byte* map_ = nullptr;
  std::vector<bool> data_pages_;  // pages known to be backed: safe to read through the mapping
};

[[nodiscard]] inline Result<std::unique_ptr<FileMem>> open_ram_file(const std::filesystem::path& p) {
  return FileMem::open(p, FileMem::Kind::kSharedRam);
}
[[nodiscard]] inline Result<std::unique_ptr<FileMem>> open_dump_file(const std::filesystem::path& p) {
  return FileMem::open(p, FileMem::Kind::kDump);
}

// Sparse in-memory guest RAM for tests and fuzzing: pages never written read as zero and are not
// reported as extents.
class FakeMem final : public PhysMem {
 public:
  explicit FakeMem(std::uint64_t size) : size_(size) {}
  [[nodiscard]] std::uint64_t size() const override { return size_; }
  [[nodiscard]] Result<void> read(GPA gpa, std::span<std::byte> out) const override;
  void for_each_extent(const std::function<bool(const Extent&)>& visit) const override;
  [[nodiscard]] std::string describe() const override;

  // Writes allocate pages; writing outside RAM fails.
  Result<void> write(GPA gpa, std::span<const std::byte> in);
  template <typename T>
  Result<void> write_as(GPA gpa, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(gpa, std::as_bytes(std::span<const T, 1>(&v, 1)));
  }
  Result<void> write_u64(GPA gpa, std::uint64_t v) { return write_as(gpa, v); }
  [[nodiscard]] std::size_t pages_allocated() const;

 private:
  std::uint64_t size_;
  std::map<std::uint64_t, std::unique_ptr<std::byte[]>> pages_;  // page number -> 4 KiB
};

// Split [addr, addr + len) at 4 KiB page boundaries: fn(page_addr, done, chunk) for each piece,
// where `done` is the offset of the piece from addr. Stops at the first error.
template <typename Fn>
[[nodiscard]] Result<void> for_each_page_chunk(std::uint64_t addr, std::size_t len, Fn&& fn) {
  std::size_t done = 0;
  while (done < len) {
    const std::uint64_t cur = addr + done;
    const std::size_t chunk = static_cast<std::size_t>(
        std::min<std::uint64_t>(len - done, kPageSize - cur % kPageSize));
    HVTRACE_TRY(fn(cur, done, chunk));
    done += chunk;
  }
  return {};
}

// Does [gpa, gpa+len) fit in [0, size)? Written to be overflow-safe for hostile values.
[[nodiscard]] constexpr bool in_range(std::uint64_t gpa, std::uint64_t len, std::uint64_t size) {
  return gpa <= size && len <= size - gpa;
}
// "256 MiB", "12 KiB", "100 bytes": sizes in messages.
[[nodiscard]] std::string human_size(std::uint64_t bytes);
[[nodiscard]] Error out_of_range(GPA gpa, std::uint64_t len, std::uint64_t size);

}  // namespace hvtrace::mem
