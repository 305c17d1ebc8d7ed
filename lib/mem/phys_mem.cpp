// Backends of PhysMem. See phys_mem.hpp for the invariants (read-only, never touch holes).
#include "mem/phys_mem.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace hvtrace::mem {

Error out_of_range(GPA gpa, std::uint64_t len, std::uint64_t size) {
  return make_error("physical address {:#x} (+{:#x} bytes) is outside guest RAM (size {:#x})", gpa.value, len,
                    size);
}

std::string human_size(std::uint64_t bytes) {
  if (bytes >= (1ULL << 30) && bytes % (1ULL << 30) == 0) return fmt::format("{} GiB", bytes >> 30);
  if (bytes >= (1ULL << 20)) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= (1ULL << 10)) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} bytes", bytes);
}

Result<std::unique_ptr<FileMem>> FileMem::open(const std::filesystem::path& path, Kind kind) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("opening guest RAM {}: {}", path.string(), std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    ::close(fd);
    return make_error("guest RAM {} is not a non-empty regular file", path.string());
  }
  std::unique_ptr<FileMem> m(new FileMem());
  m->path_ = path;
  m->kind_ = kind;
  m->fd_ = fd;
  m->size_ = static_cast<std::uint64_t>(st.st_size);
  // Shared for the live RAM file so we see the guest's writes; private for a dump (same bytes,
  // and a read fault on a sparse regular file's hole maps the zero page).
  int flags = kind == Kind::kSharedRam ? MAP_SHARED : MAP_PRIVATE;
  void* p = ::mmap(nullptr, m->size_, PROT_READ, flags | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return make_error("mapping guest RAM {}: {}", path.string(), std::strerror(errno));
  m->map_ = static_cast<const std::byte*>(p);
  m->refresh_extents();
  return m;
}

FileMem::~FileMem() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

std::string FileMem::describe() const {
  return fmt::format("{} {} ({})", kind_ == Kind::kSharedRam ? "RAM file" : "memory dump", path_.string(),
                     human_size(size_));
}

namespace {
// Calls fn(begin, end) for each data extent of fd in [0, size). If the filesystem does not
// support SEEK_DATA the whole file counts as data.
template <typename Fn>
void each_data_range(int fd, std::uint64_t size, Fn&& fn) {
  off_t pos = 0;
  const auto end = static_cast<off_t>(size);
  while (pos < end) {
    off_t d = ::lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) return;  // no more data
      fn(static_cast<std::uint64_t>(pos), size);
      return;
    }
    off_t h = ::lseek(fd, d, SEEK_HOLE);
    if (h < 0 || h > end) h = end;
    if (h <= d) return;
    fn(static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(h));
    pos = h;
  }
}
}  // namespace

void FileMem::refresh_extents() {
  std::vector<bool> pages((size_ + kPageSize - 1) / kPageSize, false);
  each_data_range(fd_, size_, [&](std::uint64_t b, std::uint64_t e) {
    for (std::uint64_t p = b / kPageSize; p < (e + kPageSize - 1) / kPageSize && p < pages.size(); ++p) pages[p] = true;
  });
  data_pages_ = std::move(pages);
}

Result<void> FileMem::read(GPA gpa, std::span<std::byte> out) const {
  if (!in_range(gpa.value, out.size(), size_)) return out_of_range(gpa, out.size(), size_);
  return for_each_page_chunk(gpa.value, out.size(), [&](std::uint64_t pos, std::size_t done, std::size_t chunk) -> Result<void> {
    if (page_is_data(pos / kPageSize)) {
      std::memcpy(out.data() + done, map_ + pos, chunk);
      return {};
    }
    // Possibly a hole: pread returns zeros for it without allocating a page.
    ssize_t n = ::pread(fd_, out.data() + done, chunk, static_cast<off_t>(pos));
    if (n != static_cast<ssize_t>(chunk))
      return make_error("reading {:#x} bytes at physical {:#x} of {}: {}", chunk, pos, path_.string(),
                        n < 0 ? std::strerror(errno) : "short read");
    return {};
  });
}

void FileMem::for_each_extent(const std::function<bool(const Extent&)>& visit) const {
  // Ask the file system now (not the cached page map) so a scan sees what the guest touched since.
  bool go = true;
  each_data_range(fd_, size_, [&](std::uint64_t b, std::uint64_t e) {
    if (!go) return;
    go = visit(Extent{GPA{b}, std::span<const std::byte>(map_ + b, e - b)});
  });
}

Result<void> FakeMem::read(GPA gpa, std::span<std::byte> out) const {
  if (!in_range(gpa.value, out.size(), size_)) return out_of_range(gpa, out.size(), size_);
  return for_each_page_chunk(gpa.value, out.size(), [&](std::uint64_t pos, std::size_t done, std::size_t chunk) -> Result<void> {
    auto it = pages_.find(pos / kPageSize);
    if (it == pages_.end()) std::memset(out.data() + done, 0, chunk);
    else std::memcpy(out.data() + done, it->second.get() + pos % kPageSize, chunk);
    return {};
  });
}

Result<void> FakeMem::write(GPA gpa, std::span<const std::byte> in) {
  if (!in_range(gpa.value, in.size(), size_)) return out_of_range(gpa, in.size(), size_);
  return for_each_page_chunk(gpa.value, in.size(), [&](std::uint64_t pos, std::size_t done, std::size_t chunk) -> Result<void> {
    auto& page = pages_[pos / kPageSize];
    if (!page) {
      page = std::make_unique<std::byte[]>(kPageSize);
      std::memset(page.get(), 0, kPageSize);
    }
    std::memcpy(page.get() + pos % kPageSize, in.data() + done, chunk);
    return {};
  });
}

void FakeMem::for_each_extent(const std::function<bool(const Extent&)>& visit) const {
  // Coalesce runs of adjacent pages (copied: test sizes are small) so scans see what a RAM file
  // would show: one extent per run of touched pages.
  std::vector<std::byte> run;
  std::uint64_t run_start = 0, next = 0;
  auto flush = [&] {
    if (run.empty()) return true;
    bool go = visit(Extent{GPA{run_start * kPageSize}, std::span<const std::byte>(run)});
    run.clear();
    return go;
  };
  for (const auto& [page, bytes] : pages_) {
    if (!run.empty() && page != next && !flush()) return;
    if (run.empty()) run_start = page;
    run.insert(run.end(), bytes.get(), bytes.get() + kPageSize);
    next = page + 1;
  }
  flush();
}

std::string FakeMem::describe() const { return fmt::format("fake memory ({})", human_size(size_)); }
std::size_t FakeMem::pages_allocated() const { return pages_.size(); }

}  // namespace hvtrace::mem
