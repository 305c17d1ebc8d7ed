// The publisher's spool records (lib/publish/spool.hpp) come from a file that may be corrupt or
// planted: decoding any bytes must neither crash nor accept what re-encodes differently.
#include "publish/spool.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  for (int i = 0; i < 8 && !bytes.empty(); ++i) {
    std::size_t used = 0;
    std::string error;
    const auto m = hvtrace::publish::decode_record(bytes, used, error);
    if (!m) break;
    if (used == 0 || used > bytes.size() || hvtrace::publish::encode_record(*m) != bytes.substr(0, used)) std::abort();
    bytes.remove_prefix(used);
  }
  return 0;
}
