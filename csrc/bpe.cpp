// GPT-2 byte-level BPE core. See bpe.h for what lives here and what does not.
#include "bpe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <stdexcept>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "unicode_tables.h"

#if defined(__GNUC__)
#define GPT2TUI_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define GPT2TUI_NOINLINE __declspec(noinline)
#else
#define GPT2TUI_NOINLINE
#endif

namespace gpt2tui {

// -- hashing ---------------------------------------------------------------------------------------------------

static inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

static inline uint64_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// The last 1 to 7 bytes of a piece as one word, without reading past them (a copy of variable length is a library
// call, and most pieces are that short): two overlapping 4-byte loads, or the first, middle and last byte. Not the
// bytes' plain value, but a function of them and of n, which is all a hash needs.
static inline uint64_t load_tail(const uint8_t* p, size_t n) {
    if (n >= 4) return load_u32(p) | (load_u32(p + n - 4) << 32);
    return uint64_t(p[0]) | (uint64_t(p[n / 2]) << 8) | (uint64_t(p[n - 1]) << 16);
}

// a[0, n) == b[0, n) for the short strings a lookup compares once the hashes match; a memcmp of variable length is a
// library call.
static inline bool equal_bytes(const uint8_t* a, const uint8_t* b, size_t n) {
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            if (load_u64(a + i) != load_u64(b + i)) return false;
        return load_u64(a + n - 8) == load_u64(b + n - 8);
    }
    return n == 0 || load_tail(a, n) == load_tail(b, n);
}

// dst[0, n) = src[0, n) for n <= 24 (a piece the cache keeps), in fixed-size moves that overlap rather than reach past
// n: a memcpy of variable length is a library call, once per piece of text like base64.
static inline void copy_short(uint8_t* dst, const uint8_t* src, size_t n) {
    if (n >= 8) {
        const uint64_t first = load_u64(src), last = load_u64(src + n - 8);
        if (n > 16) {
            const uint64_t middle = load_u64(src + 8);
            std::memcpy(dst + 8, &middle, 8);
        }
        std::memcpy(dst, &first, 8);
        std::memcpy(dst + n - 8, &last, 8);
    } else if (n >= 4) {
        const uint32_t first = uint32_t(load_u32(src)), last = uint32_t(load_u32(src + n - 4));
        std::memcpy(dst, &first, 4);
        std::memcpy(dst + n - 4, &last, 4);
    } else if (n > 0) {
        dst[0] = src[0], dst[n / 2] = src[n / 2], dst[n - 1] = src[n - 1];
    }
}

// A short multiply-xorshift hash, eight bytes at a time: pieces are short, so speed beats avalanche quality.
static inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xC2B2AE3D27D4EB4FULL);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ load_u64(p + i)) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    if (i < n) {
        h = (h ^ load_tail(p + i, n - i)) * 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 29;
    }
    return h ? h : 1;
}

static uint64_t table_size_for(size_t n) {
    uint64_t size = 16;
    while (size < n * 2) size <<= 1;
    return size;
}

// The bytes of a key of at most 8 bytes as one word, distinct for distinct keys of one length: such keys are compared
// in the slot itself, without a second miss into the arena.
static inline uint64_t short_key(const uint8_t* p, size_t n) { return n == 8 ? load_u64(p) : load_tail(p, n); }

void BytesMap::build(const std::vector<std::string>& keys) {
    const uint64_t size = table_size_for(keys.size());
    slots_.assign(size, Slot{});
    mask_ = size - 1;
    arena_.clear();
    filter_.reset(keys.size());
    for (size_t r = 0; r < keys.size(); ++r) {
        const auto* p = reinterpret_cast<const uint8_t*>(keys[r].data());
        const uint64_t h = hash_bytes(p, keys[r].size());
        uint64_t i = h & mask_;
        while (slots_[i].hash != 0) i = (i + 1) & mask_;
        const size_t n = keys[r].size();
        slots_[i] = Slot{h, n <= 8 ? short_key(p, n) : arena_.size(), uint32_t(n), Rank(r)};
        filter_.add(h);
        arena_ += keys[r];
    }
}

uint64_t BytesMap::hash(const uint8_t* p, size_t n) { return hash_bytes(p, n); }

Rank BytesMap::find(const uint8_t* p, size_t n, uint64_t h) const {
    if (!filter_.may_contain(h)) return kNoRank;
    const uint64_t word = n <= 8 ? short_key(p, n) : 0;
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
        const Slot& s = slots_[i];
        if (s.hash == 0) return kNoRank;
        if (s.hash == h && s.len == n &&
            (n <= 8 ? s.key == word : equal_bytes(reinterpret_cast<const uint8_t*>(arena_.data()) + s.key, p, n)))
            return s.rank;
    }
}

void PairMap::reserve(size_t n) {
    uint64_t size = 16;
    while (size < 4 * n) size <<= 1;
    entries_.assign(size, kEmpty);
    mask_ = size - 1;
    filter_.reset(n);
}

void PairMap::insert(Rank a, Rank b, Rank merged) {
    const uint64_t key = pack_key(a, b);
    uint64_t i = mix(key) & mask_;
    while (entries_[i] != kEmpty && (entries_[i] >> kRankBits) != key) i = (i + 1) & mask_;
    // Several splits of one token name the same pair only if two tokens had equal bytes: keep the lowest rank,
    // which is what a lookup by bytes would find.
    if (entries_[i] != kEmpty && Rank(entries_[i] & kRankMask) <= merged) return;
    entries_[i] = (key << kRankBits) | merged;
    filter_.add(mix(key));
}

// -- construction ----------------------------------------------------------------------------------------------

Encoder::Encoder(std::vector<std::string> tokens, std::vector<std::string> extra, size_t long_piece_len,
                 size_t window, size_t margin)
    : n_mergeable_(tokens.size()), long_piece_len_(long_piece_len), window_(window), margin_(margin) {
    // Distinct for every encoder of the process (an odd multiplier is a bijection), whatever their addresses.
    static std::atomic<uint64_t> encoders{0};
    cache_salt_ = (encoders.fetch_add(1) + 1) * 0x9E3779B97F4A7C15ULL;
    if (window != 0 && margin >= window) throw std::invalid_argument("the margin must be shorter than the window");
    for (size_t r = 0; r < tokens.size(); ++r)
        if (tokens[r].empty())
            throw std::invalid_argument("token " + std::to_string(r) +
                                        " of the vocabulary is empty: every token needs bytes");
    vocab_.build(tokens);
    for (int b = 0; b < 256; ++b) {
        const uint8_t byte = uint8_t(b);
        byte_rank_[b] = vocab_.find(&byte, 1);
        if (byte_rank_[b] == kNoRank) throw std::invalid_argument("the vocabulary lacks a single-byte token");
    }
    // Merging two adjacent parts yields the token spelled by their bytes; its rank is the merge's priority. Every
    // part is itself a token, so the lookup can be keyed by the two parts' ids instead of by their bytes.
    if (tokens.size() >= (size_t(1) << PairMap::kIdBits) - 1) throw std::invalid_argument("vocabulary too large");
    std::vector<std::array<Rank, 3>> found;
    for (size_t r = 0; r < tokens.size(); ++r) {
        const auto* p = reinterpret_cast<const uint8_t*>(tokens[r].data());
        for (size_t k = 1; k < tokens[r].size(); ++k) {
            const Rank left = vocab_.find(p, k);
            const Rank right = vocab_.find(p + k, tokens[r].size() - k);
            if (left != kNoRank && right != kNoRank) found.push_back({left, right, Rank(r)});
        }
    }
    pairs_.reserve(found.size());
    for (const auto& [left, right, merged] : found) pairs_.insert(left, right, merged);
    byte_pair_rank_.resize(65536);
    for (uint32_t a = 0; a < 256; ++a)
        for (uint32_t b = 0; b < 256; ++b) byte_pair_rank_[(a << 8) | b] = pairs_.find(byte_rank_[a], byte_rank_[b]);
    decode_ = std::move(tokens);
    for (auto& e : extra) decode_.push_back(std::move(e));

    // Backtracking tables. A token takes part only if BPE spells its own bytes as itself: no encoding can
    // contain any other.
    const size_t V = n_mergeable_;
    split_left_.assign(V, kNoRank);
    split_right_.assign(V, kNoRank);
    next_prefix_.assign(V, kNoRank);
    std::vector<bool> producible(V, false);
    token_len_.resize(V);
    for (size_t r = 0; r < V; ++r) {
        if (decode_[r].size() > 0xFFFF) throw std::invalid_argument("a token is longer than 65535 bytes");
        token_len_[r] = uint16_t(decode_[r].size());
    }
    std::vector<Rank> ids;
    for (size_t r = 0; r < V; ++r) {
        const auto* p = reinterpret_cast<const uint8_t*>(decode_[r].data());
        const size_t len = decode_[r].size();
        if (len == 1) {
            split_left_[r] = split_right_[r] = Rank(r);
            producible[r] = true;
            continue;
        }
        Rank last[2] = {kNoRank, kNoRank};
        ids.clear();
        merge(p, len, ids, last);
        if (ids.size() == 1 && ids[0] == r) {
            producible[r] = true;
            split_left_[r] = last[0];
            split_right_[r] = last[1];
        }
    }
    // Backtracking and the windows' seam checks (valid_pair) read a token's rank as the time its last merge happened,
    // after its parts' merges: true of every learned merge list, GPT-2's included, but not of any ranking a
    // hand-made vocabulary could have. Without it, long pieces go to the merge loop, which assumes nothing.
    for (size_t r = 0; r < V; ++r)
        if (producible[r] && decode_[r].size() > 1 && (split_left_[r] >= r || split_right_[r] >= r))
            long_piece_len_ = SIZE_MAX;
    // Every part the merge loop ever holds is a token BPE spells as itself (the merges inside a part's bytes are
    // exactly those BPE makes on those bytes alone), and it is formed by that token's own last merge. So a pair of
    // parts can merge only if it is some token's last merge: any other pair whose bytes happen to spell a token is
    // never the lowest-ranked pair (were it, merging it would form a part BPE does not make). Keeping only those
    // pairs halves the table; the lookups that remain are the hot loop's cache misses.
    {
        size_t n_merges = 0;
        for (size_t r = 0; r < V; ++r) n_merges += producible[r] && decode_[r].size() > 1;
        pairs_ = PairMap();
        pairs_.reserve(n_merges);
        for (size_t r = 0; r < V; ++r)
            if (producible[r] && decode_[r].size() > 1) pairs_.insert(split_left_[r], split_right_[r], Rank(r));
    }
    // The trie, built as sorted children lists, then laid out breadth first.
    struct Building {
        std::vector<std::pair<uint8_t, uint32_t>> children;
        Rank token = kNoRank;
    };
    std::vector<Building> tmp(1);
    for (size_t r = 0; r < V; ++r) {
        if (!producible[r]) continue;
        uint32_t node = 0;
        for (unsigned char c : decode_[r]) {
            auto& kids = tmp[node].children;
            auto it = std::find_if(kids.begin(), kids.end(), [c](const auto& e) { return e.first == c; });
            if (it == kids.end()) {
                kids.emplace_back(c, uint32_t(tmp.size()));
                node = uint32_t(tmp.size());
                tmp.emplace_back();
            } else {
                node = it->second;
            }
        }
        tmp[node].token = Rank(r);
    }
    std::vector<uint32_t> order{0}, new_id(tmp.size());
    for (size_t k = 0; k < order.size(); ++k) {
        auto& kids = tmp[order[k]].children;
        std::sort(kids.begin(), kids.end());
        for (const auto& e : kids) order.push_back(e.second);
    }
    for (size_t k = 0; k < order.size(); ++k) new_id[order[k]] = uint32_t(k);
    trie_.resize(order.size());
    for (size_t k = 0; k < order.size(); ++k) {
        const Building& b = tmp[order[k]];
        trie_[k] = TrieNode{uint32_t(edge_byte_.size()), uint32_t(b.children.size()), b.token};
        for (const auto& e : b.children) {
            edge_byte_.push_back(e.first);
            edge_child_.push_back(new_id[e.second]);
        }
    }
    level1_.assign(256, 0);
    level2_.assign(65536, 0);
    const TrieNode& root = trie_[0];
    for (uint32_t e = root.first_edge; e < root.first_edge + root.n_edges; ++e) {
        const uint32_t b1 = edge_byte_[e], child = edge_child_[e];
        level1_[b1] = child;
        const TrieNode& node = trie_[child];
        for (uint32_t f = node.first_edge; f < node.first_edge + node.n_edges; ++f)
            level2_[(b1 << 8) | edge_byte_[f]] = edge_child_[f];
    }
    for (size_t r = 0; r < V; ++r) {
        if (!producible[r]) continue;
        const std::string& t = decode_[r];
        next_prefix_[r] = t.size() > 1 ? longest_prefix(reinterpret_cast<const uint8_t*>(t.data()), t.size() - 1)
                                       : kNoRank;
    }
    build_digit_tables();
}

// -- pre-tokenisation --------------------------------------------------------------------------------------------
//
// GPT-2's pattern, tried left to right at each position (the first alternative that matches wins):
//   '(?:[sdmt]|ll|ve|re) | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
// Only U+0020 may lead a word; a run of white space before a word leaves its last character to the word (or, when
// that character is not U+0020, to a piece of its own).

// Decode one codepoint at s[i]; invalid or truncated sequences count as one byte of class "other".
static inline size_t decode_utf8(const uint8_t* s, size_t n, size_t i, uint32_t& cp) {
    const uint8_t b0 = s[i];
    if (b0 < 0x80) {
        cp = b0;
        return 1;
    }
    size_t len;
    uint32_t min;
    if ((b0 & 0xE0) == 0xC0) {
        len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
        cp = 0xFFFFFFFF;
        return 1;
    }
    if (i + len > n) {
        cp = 0xFFFFFFFF;
        return 1;
    }
    for (size_t k = 1; k < len; ++k) {
        const uint8_t b = s[i + k];
        if ((b & 0xC0) != 0x80) {
            cp = 0xFFFFFFFF;
            return 1;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        cp = 0xFFFFFFFF;
        return 1;
    }
    return len;
}

struct AsciiClasses {
    uint8_t c[128];
    constexpr AsciiClasses() : c{} {
        for (int i = 0; i < 128; ++i) {
            const bool letter = (i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z');
            const bool digit = i >= '0' && i <= '9';
            const bool space = i == ' ' || (i >= 0x09 && i <= 0x0D);
            c[i] = letter ? kLetter : digit ? kNumber : space ? kSpace : kOther;
        }
    }
};
static constexpr AsciiClasses kAscii;

// Class of the character at s[i], and its byte length.
static inline CharClass class_at(const uint8_t* s, size_t n, size_t i, size_t& len) {
    if (s[i] < 0x80) {
        len = 1;
        return CharClass(kAscii.c[s[i]]);
    }
    uint32_t cp;
    len = decode_utf8(s, n, i, cp);
    return cp == 0xFFFFFFFF ? kOther : char_class(cp);
}

// End of the run of ASCII letters (or digits) that starts at i, 16 bytes at a time; stops at any other byte, which
// may still be a non-ASCII letter (or digit) for the caller to decode.
static inline size_t ascii_run_end(const uint8_t* s, size_t n, size_t i, bool letters) {
#if defined(__SSE2__)
    // Letters: (c | 0x20) - 'a' < 26; digits: c - '0' < 10; as unsigned bytes, where min(t, limit) == t.
    const __m128i fold = _mm_set1_epi8(letters ? 0x20 : 0), base = _mm_set1_epi8(letters ? 'a' : '0');
    const __m128i limit = _mm_set1_epi8(letters ? 25 : 9);
    for (; i + 16 <= n; i += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
        const __m128i t = _mm_sub_epi8(_mm_or_si128(v, fold), base);
        const unsigned in = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(t, limit), t)));
        if (in != 0xFFFF) return i + size_t(__builtin_ctz(~in));
    }
#endif
    for (; i < n; ++i) {
        const uint8_t c = s[i];
        if (letters ? uint8_t((c | 0x20) - 'a') >= 26 : uint8_t(c - '0') >= 10) return i;
    }
    return n;
}

// End of the run of characters of class `cls` that starts at i.
static inline size_t run_end(const uint8_t* s, size_t n, size_t i, CharClass cls) {
    while (i < n) {
        if ((cls == kLetter || cls == kNumber) && s[i] < 0x80) {  // ASCII words and numbers, a vector at a time
            i = ascii_run_end(s, n, i, cls == kLetter);
            if (i == n || s[i] < 0x80) return i;
        }
        if (s[i] < 0x80) {  // ASCII inner loop: most text spends its time here
            if (kAscii.c[s[i]] != cls) return i;
            ++i;
            continue;
        }
        size_t len;
        if (class_at(s, n, i, len) != cls) return i;
        i += len;
    }
    return n;
}

size_t next_pretoken(const uint8_t* s, size_t n, size_t i) {
    // '(?:[sdmt]|ll|ve|re)
    if (s[i] == '\'' && i + 1 < n) {
        const uint8_t a = s[i + 1];
        if (a == 's' || a == 'd' || a == 'm' || a == 't') return i + 2;
        if (i + 2 < n) {
            const uint8_t b = s[i + 2];
            if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return i + 3;
        }
    }
    size_t len;
    CharClass cls = class_at(s, n, i, len);
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a single U+0020 may lead a run of one class.
    if (s[i] == ' ' && i + 1 < n) {
        size_t len1;
        const CharClass next = class_at(s, n, i + 1, len1);
        if (next != kSpace) return run_end(s, n, i + 1 + len1, next);
    }
    if (cls != kSpace) return run_end(s, n, i + len, cls);
    // White space: `\s+(?!\S)` takes the run but leaves its last character when a non-space follows;
    // a lone white-space character before a non-space falls through to `\s+`.
    size_t j = i, last = i;
    while (j < n) {
        size_t l;
        if (class_at(s, n, j, l) != kSpace) break;
        last = j;
        j += l;
    }
    if (j == n) return n;
    return last > i ? last : j;
}

// -- the merge loop ------------------------------------------------------------------------------------------------

// A direct-mapped cache of short pieces already merged: words repeat, and a hit costs one hash and one compare. One
// per thread, shared by every encoder the thread runs: each salts its keys with its own cache_salt_, so that encoders
// with different vocabularies never see each other's ids.
struct PieceCache {
    static constexpr size_t kSlots = 4096, kMaxBytes = 24, kMaxIds = 12;
    struct Slot {
        uint64_t hash = 0;
        uint8_t n_bytes = 0, n_ids = 0;
        uint8_t bytes[kMaxBytes];
        Rank ids[kMaxIds];
    };
    std::vector<Slot> slots = std::vector<Slot>(kSlots);

    // Longer pieces repeat too, in code and documents: indentation deeper than 24 spaces, rules of dashes, table
    // borders. Fewer slots, each holding its piece and ids at any length up to kMaxLongBytes.
    static constexpr size_t kLongSlots = 256, kMaxLongBytes = 4096;
    struct LongSlot {
        uint64_t hash = 0;
        std::string bytes;
        std::vector<Rank> ids;
    };
    std::vector<LongSlot> long_slots = std::vector<LongSlot>(kLongSlots);
};

namespace {

// Per-thread scratch space, reused across pieces so that the loop allocates nothing in the steady state.
struct Part {
    Rank id;
    Rank pair_rank;      // rank of the token (this part, next part) would make; kNoRank if none or merged away
    int32_t prev, next;  // neighbours in the list of parts still standing, -1 at the ends
};
struct Scratch {
    std::vector<Part> parts;         // indexed by the byte position where the part starts
    std::vector<uint64_t> tree[2];   // tournament trees over blocks of positions: the best (rank << 32 | position)
    std::vector<uint64_t> dead;      // backtracking: positions known to lead to no valid encoding
    std::vector<Rank> window[2];     // a long piece's current windows
    std::vector<Rank> tail;          // a long piece's second half, until the first half reaches it
    std::vector<uint16_t> digits;    // backtrack_digits' tokens, as compact ids
};
thread_local Scratch scratch;
thread_local PieceCache cache;

// The thread's scratch space and piece cache, through calls the compiler cannot see into. In a shared library (the
// Python extension) each use of a thread_local is a call to __tls_get_addr, and GCC repeats that call inside loops
// instead of keeping the address in a register (it was 10% of random digits' time there). Each function that needs
// them asks once.
GPT2TUI_NOINLINE Scratch& thread_scratch() { return scratch; }
GPT2TUI_NOINLINE PieceCache& thread_cache() { return cache; }


constexpr int32_t kBlock = 16;  // positions per tree leaf: 16 ranks are one cache line, scanned linearly
constexpr int32_t kFlat = 16;   // trees of up to this many leaves (256 bytes) keep only their leaves and root

}  // namespace

// A short piece (most words, and every piece of text like base64) is merged the way tiktoken does it: the parts and
// their pair ranks sit in two small arrays on the stack, and each merge scans them for the lowest rank. Setting up
// the list and tree below costs more than these few scans.
void Encoder::merge_small(const uint8_t* p, size_t n, std::vector<Rank>& out, Rank* last) const {
    Rank id[kSmallPiece], rank[kSmallPiece];
    for (size_t i = 0; i < n; ++i) id[i] = byte_rank_[p[i]];
    for (size_t i = 0; i + 1 < n; ++i) rank[i] = byte_pair_rank_[(uint32_t(p[i]) << 8) | p[i + 1]];
    rank[n - 1] = kNoRank;
    size_t m = n;  // parts standing
    while (m > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < m; ++i) best = rank[i] < rank[best] ? i : best;  // leftmost lowest
        if (rank[best] == kNoRank) break;
        if (last) last[0] = id[best], last[1] = id[best + 1];
        id[best] = rank[best];
        --m;
        for (size_t i = best + 1; i < m; ++i) id[i] = id[i + 1], rank[i] = rank[i + 1];
        rank[best] = best + 1 < m ? pairs_.find(id[best], id[best + 1]) : kNoRank;
        if (best > 0) rank[best - 1] = pairs_.find(id[best - 1], id[best]);
    }
    out.insert(out.end(), id, id + m);
}

// BPE as tiktoken defines it: repeatedly merge the adjacent pair of lowest rank, the leftmost on ties. The parts
// form a linked list; the best pair is found in a tournament tree whose leaves are blocks of 16 positions, so a
// merge costs at most three leaf rescans and a walk towards the root (stopping where nothing changes): O(n log n)
// for a piece of n bytes, with the memory touched staying near the merge (a binary heap's sift-down strays across
// the whole piece, and keeps stale entries).
//
// Each merge waits for the tree the last one updated: the pair lookups, a block rescan and the root, one after the
// other. Hence the block rescans reduce pairwise, small trees (a whole window) recompute the root from all their
// leaves without branches, and encode_long runs two windows at once, interleaving their merges so that one's waits
// can overlap the other's (7% on random digits; mispredicted branches, which stall both, are the rest).
#if defined(__GNUC__)
#define GPT2TUI_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define GPT2TUI_INLINE __forceinline
#else
#define GPT2TUI_INLINE inline
#endif

namespace {
class MergeRun {
  public:
    // The tables are the encoder's: byte -> rank, (byte, byte) -> merged rank, and the pairs of parts.
    MergeRun(const Rank* byte_rank, const Rank* byte_pair_rank, const PairMap& pairs, const uint8_t* p, size_t n,
             Part* part, std::vector<uint64_t>& storage)
        : pairs_(pairs), part_(part), n_(int32_t(n)) {
        for (size_t i = 0; i < n; ++i)
            part[i] = Part{byte_rank[p[i]], kNoRank, int32_t(i) - 1, i + 1 < n ? int32_t(i + 1) : -1};
        for (size_t i = 0; i + 1 < n; ++i) part[i].pair_rank = byte_pair_rank[(uint32_t(p[i]) << 8) | p[i + 1]];
        const int32_t n_blocks = int32_t((n + kBlock - 1) / kBlock);
        leaves_ = 1;
        while (leaves_ < n_blocks) leaves_ <<= 1;
        // Up to kFlat leaves the root is recomputed from all of them after each merge: a walk up the tree that
        // stops where nothing changes mispredicts that stop about every other merge.
        flat_ = leaves_ <= kFlat;
        storage.assign(size_t(flat_ ? leaves_ + kFlat : 2 * leaves_), ~uint64_t(0));
        tree_ = storage.data();
        for (int32_t b = 0; b < n_blocks; ++b) tree_[leaves_ + b] = block_best(part, n_, b);
        for (int32_t t = leaves_ - 1; t >= 1; --t) tree_[t] = std::min(tree_[2 * t], tree_[2 * t + 1]);
    }

    GPT2TUI_INLINE bool done() const { return (tree_[1] >> 32) == kNoRank; }

    // Merge the best pair (the run must not be done); `last`, if given, receives its two parts.
    GPT2TUI_INLINE void step(Rank* last) {
        // Locals, not members: the stores into parts would otherwise make the compiler reload every member.
        Part* const part = part_;
        uint64_t* const tree = tree_;
        const int32_t n = n_, leaves = leaves_;
        // Part i absorbs its right neighbour j: j leaves the list, and the pairs that now touch i are re-ranked.
        const int32_t i = int32_t(tree[1] & 0xFFFFFFFFu);
        Part& a = part[i];
        const int32_t j = a.next;
        if (last) last[0] = a.id, last[1] = part[j].id;
        a.id = Rank(tree[1] >> 32);
        a.next = part[j].next;
        if (a.next >= 0) part[a.next].prev = i;
        part[j].pair_rank = kNoRank;
        a.pair_rank = a.next >= 0 ? pairs_.find(a.id, part[a.next].id) : kNoRank;
        if (a.prev >= 0) part[a.prev].pair_rank = pairs_.find(part[a.prev].id, a.id);
        const bool flat = flat_;
        refresh(part, n, tree, leaves, flat, i);
        if (j / kBlock != i / kBlock) refresh(part, n, tree, leaves, flat, j);
        if (a.prev >= 0 && a.prev / kBlock != i / kBlock) refresh(part, n, tree, leaves, flat, a.prev);
        if (flat) tree[1] = root_of_leaves(tree + leaves);
    }

    void emit(std::vector<Rank>& out) const {
        for (int32_t i = 0; i >= 0; i = part_[i].next) out.push_back(part_[i].id);
    }

  private:
    // A pair's key orders by rank, then by position (the leftmost wins ties); no pair sorts last.
    static GPT2TUI_INLINE uint64_t key(const Part* part, int32_t i) { return (uint64_t(part[i].pair_rank) << 32) | uint32_t(i); }
    static GPT2TUI_INLINE uint64_t block_best(const Part* part, int32_t n, int32_t blk) {
        const int32_t begin = blk * kBlock;
        if (begin + kBlock > n) {  // the last, partial block
            uint64_t best = ~uint64_t(0);
            for (int32_t i = begin; i < n; ++i) best = std::min(best, key(part, i));
            return best;
        }
        uint64_t k[kBlock];  // reduced pairwise: four dependent steps instead of sixteen
        for (int32_t i = 0; i < kBlock; ++i) k[i] = key(part, begin + i);
        for (int32_t width = kBlock / 2; width >= 1; width /= 2)
            for (int32_t i = 0; i < width; ++i) k[i] = std::min(k[i], k[i + width]);
        return k[0];
    }
    // Rescan the leaf of `pos`; a flat tree's root is recomputed afterwards, a deep one's path is walked here.
    static GPT2TUI_INLINE void refresh(const Part* part, int32_t n, uint64_t* tree, int32_t leaves, bool flat,
                                       int32_t pos) {
        int32_t t = leaves + pos / kBlock;
        tree[t] = block_best(part, n, pos / kBlock);
        if (flat) return;
        for (t >>= 1; t >= 1; t >>= 1) {
            const uint64_t best = std::min(tree[2 * t], tree[2 * t + 1]);
            if (tree[t] == best) break;  // nothing above can change
            tree[t] = best;
        }
    }
    static GPT2TUI_INLINE uint64_t root_of_leaves(const uint64_t* leaf) {
        uint64_t k[kFlat];
        for (int32_t b = 0; b < kFlat; ++b) k[b] = leaf[b];  // past the last leaf: padding, ~0
        for (int32_t width = kFlat / 2; width >= 1; width /= 2)
            for (int32_t b = 0; b < width; ++b) k[b] = std::min(k[b], k[b + width]);
        return k[0];
    }

    const PairMap& pairs_;
    Part* part_;
    uint64_t* tree_;
    int32_t n_, leaves_;
    bool flat_;
};
}  // namespace

void Encoder::merge(const uint8_t* p, size_t n, std::vector<Rank>& out, Rank* last) const {
    if (n <= kSmallPiece) {
        merge_small(p, n, out, last);
        return;
    }
    // Positions are 32-bit. Only settings that send whole pieces to the merge loop (a huge long_piece_len or window)
    // can reach this; the default windows never do.
    if (n > size_t(INT32_MAX)) throw std::length_error("a piece of over 2 GiB to merge whole: use smaller windows");
    Scratch& scratch = thread_scratch();
    scratch.parts.resize(n);
    MergeRun run(byte_rank_, byte_pair_rank_.data(), pairs_, p, n, scratch.parts.data(), scratch.tree[0]);
    while (!run.done()) run.step(last);
    run.emit(out);
}

// Two independent merges, interleaved step by step: the same results as two calls of merge, in less time.
void Encoder::merge2(const uint8_t* p, size_t n, std::vector<Rank>& out, const uint8_t* q, size_t m,
                     std::vector<Rank>& out2) const {
    if (n <= kSmallPiece || m <= kSmallPiece || n > size_t(INT32_MAX) || m > size_t(INT32_MAX)) {
        merge(p, n, out);
        merge(q, m, out2);
        return;
    }
    Scratch& scratch = thread_scratch();
    scratch.parts.resize(n + m);
    MergeRun a(byte_rank_, byte_pair_rank_.data(), pairs_, p, n, scratch.parts.data(), scratch.tree[0]);
    MergeRun b(byte_rank_, byte_pair_rank_.data(), pairs_, q, m, scratch.parts.data() + n, scratch.tree[1]);
    for (;;) {
        const bool a_done = a.done(), b_done = b.done();
        if (a_done && b_done) break;
        if (!a_done) a.step(nullptr);
        if (!b_done) b.step(nullptr);
    }
    a.emit(out);
    b.emit(out2);
}

void Encoder::encode_piece(const uint8_t* p, size_t n, std::vector<Rank>& out, PieceCache& cache) const {
    if (n == 1) {
        out.push_back(byte_rank_[p[0]]);
        return;
    }
    if (n == 2) {  // a two-byte token is exactly its byte pair's merge, so the direct table answers
        const Rank pair = byte_pair_rank_[(uint32_t(p[0]) << 8) | p[1]];
        if (pair != kNoRank) {
            out.push_back(pair);
        } else {
            out.push_back(byte_rank_[p[0]]);
            out.push_back(byte_rank_[p[1]]);
        }
        return;
    }
    const uint64_t h = hash_bytes(p, n);
    const Rank whole = vocab_.find(p, n, h);
    if (whole != kNoRank) {
        out.push_back(whole);
        return;
    }
    if (n > PieceCache::kMaxBytes) {
        encode_uncommon(p, n, h, out, cache);
        return;
    }
    if (n >= long_piece_len_ && encode_long(p, n, out)) return;
    const uint64_t key = h ^ cache_salt_;
    PieceCache::Slot& slot = cache.slots[key & (PieceCache::kSlots - 1)];
    if (slot.hash == key && slot.n_bytes == n && equal_bytes(slot.bytes, p, n)) {
        for (size_t k = 0; k < slot.n_ids; ++k) out.push_back(slot.ids[k]);  // a word is 1-3 ids: no range insert
        return;
    }
    const size_t start = out.size();
    merge(p, n, out);
    const size_t count = out.size() - start;
    if (count <= PieceCache::kMaxIds) {
        slot.hash = key;
        slot.n_bytes = uint8_t(n);
        slot.n_ids = uint8_t(count);
        copy_short(slot.bytes, p, n);
        for (size_t k = 0; k < count; ++k) slot.ids[k] = out[start + k];
    }
}

// A piece longer than the short-piece cache takes, and not a token: through the long-piece cache, where it fits. Kept
// out of line, so that encode_piece's common path stays short.
GPT2TUI_NOINLINE void Encoder::encode_uncommon(const uint8_t* p, size_t n, uint64_t h, std::vector<Rank>& out,
                              PieceCache& cache) const {
    const bool fits = n <= PieceCache::kMaxLongBytes;
    const uint64_t key = h ^ cache_salt_;
    PieceCache::LongSlot& slot = cache.long_slots[key & (PieceCache::kLongSlots - 1)];
    if (fits && slot.hash == key && slot.bytes.size() == n && std::memcmp(slot.bytes.data(), p, n) == 0) {
        out.insert(out.end(), slot.ids.begin(), slot.ids.end());
        return;
    }
    const size_t start = out.size();
    if (!(n >= long_piece_len_ && encode_long(p, n, out))) merge(p, n, out);
    if (fits) {  // the key last: if an assign throws (bad_alloc), the slot is left empty, not holding other ids
        slot.hash = 0;
        slot.bytes.assign(reinterpret_cast<const char*>(p), n);
        slot.ids.assign(out.begin() + std::ptrdiff_t(start), out.end());
        slot.hash = key;
    }
}

// -- backtracking: linear-time BPE, cheapest where tokens are long --------------------------------------------------
//
// Backtracking (the method of GitHub's `bpe` crate) produces the same tokens as rank-order merging, walking left to
// right, from one fact about BPE: a sequence of tokens is the encoding of its text exactly when each token is the
// encoding of its own bytes and every two neighbours are the encoding of their joined bytes. So: take the longest
// token that starts here; if it does not fit after the previous token, try the next shorter one; if none fits, give
// the previous token back and remember that this position leads nowhere. Its cost is per token, plus the retries;
// merging's is per byte. encode_long uses it for windows of long tokens, and for whole pieces when a seam fails.

Rank Encoder::longest_prefix(const uint8_t* p, size_t n) const {
    if (n == 0) return kNoRank;
    const uint32_t first = level1_[p[0]];
    if (first == 0) return kNoRank;
    Rank best = trie_[first].token;
    if (n == 1) return best;
    const uint32_t second = level2_[(uint32_t(p[0]) << 8) | p[1]];
    if (second == 0) return best;
    const TrieNode* node = &trie_[second];
    if (node->token != kNoRank) best = node->token;
    for (size_t k = 2; k < n; ++k) {
        const uint8_t* first = edge_byte_.data() + node->first_edge;
        const uint8_t* last = first + node->n_edges;
        const uint8_t* hit = node->n_edges > 8 ? std::lower_bound(first, last, p[k]) : std::find(first, last, p[k]);
        if (hit == last || *hit != p[k]) break;
        node = &trie_[edge_child_[hit - edge_byte_.data()]];
        if (node->token != kNoRank) best = node->token;
    }
    return best;
}

// Does BPE encode bytes(left) + bytes(right) as exactly [left, right]? Undo the two tokens' merges, latest first,
// and at each stage ask whether the pair across the boundary would have merged before the side that was undone
// had formed (on equal ranks the left one wins, hence the +1 on the right).
bool Encoder::valid_pair(Rank left, Rank right) const {
    Rank limit = kNoRank;
    for (;;) {
        const Rank across = pairs_.find(left, right);
        if (across != kNoRank && across < limit) return false;
        if (left > right) {
            limit = left;
            left = split_right_[left];
            if (left == limit) {  // left is a single byte: undo the right side instead
                limit = right + 1;
                right = split_left_[right];
                if (right + 1 == limit) return true;
            }
        } else {
            limit = right + 1;
            right = split_left_[right];
            if (right + 1 == limit) {  // right is a single byte: undo the left side instead
                limit = left;
                left = split_right_[left];
                if (left == limit) return true;
            }
        }
    }
}

namespace {
// The walk both backtracking encoders take, over whichever tables answer its questions: `longest(pos)`, the longest
// token at pos (or `none` at the end); `valid(a, b)`, whether BPE keeps [a, b] as they are; `shorter(t)`, the longest
// token that is a proper prefix of t (or `none`); `length(t)`. Tokens go to out[start, ...); false, with out cut back
// to start, if even the first position leads nowhere (not for a BPE vocabulary: the caller answers otherwise).
template <class Token, class Longest, class Valid, class Shorter, class Length>
inline bool backtrack_walk(size_t n, std::vector<Token>& out, std::vector<uint64_t>& dead, Token none, Longest longest,
                           Valid valid, Shorter shorter, Length length) {
    const size_t start = out.size();
    dead.assign((n + 64) / 64, 0);
    size_t pos = 0;
    Token next = longest(size_t(0));
    while (next != none) {
        Token token = next;
        const Token last = out.size() > start ? out.back() : none;
        for (;;) {
            const size_t end = pos + length(token);
            if (!((dead[end >> 6] >> (end & 63)) & 1) && (last == none || valid(last, token))) {
                out.push_back(token);
                pos = end;
                next = pos < n ? longest(pos) : none;
                break;
            }
            if (shorter(token) != none) {
                token = shorter(token);
                continue;
            }
            if (last == none) {
                out.resize(start);
                return false;
            }
            dead[pos >> 6] |= uint64_t(1) << (pos & 63);
            out.pop_back();
            pos -= length(last);
            next = last;
            break;
        }
    }
    return true;
}
}  // namespace

bool Encoder::backtrack(const uint8_t* p, size_t n, std::vector<Rank>& out) const {
    return backtrack_walk(
        n, out, thread_scratch().dead, kNoRank, [&](size_t pos) { return longest_prefix(p + pos, n - pos); },
        [this](Rank a, Rank b) { return valid_pair(a, b); }, [this](Rank t) { return next_prefix_[t]; },
        [this](Rank t) { return size_t(token_len_[t]); });
}

// Digits: the same walk as backtrack's, over tables that answer each of its questions with one or two loads. On random
// digits it is 2.2x faster than merging them (~0.6 merges per byte) and 4.5x faster than backtrack.
void Encoder::build_digit_tables() {
    using D = DigitTables;
    auto d = std::make_unique<D>();
    d->child.push_back({});
    d->token.push_back(D::kNone);
    const auto is_digits = [](const std::string& t) {
        return std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    for (size_t r = 0; r < n_mergeable_; ++r) {
        // split_left_ is set exactly for the tokens BPE can produce; no other can appear in an encoding.
        const std::string& t = decode_[r];
        if (split_left_[r] == kNoRank || !is_digits(t)) continue;
        if (d->rank.size() == D::kMaxTokens || d->child.size() + t.size() >= D::kNone) return;  // too many
        uint16_t node = 0;
        for (const char c : t) {
            if (d->child[node][size_t(c - '0')] == 0) {
                d->child[node][size_t(c - '0')] = uint16_t(d->child.size());
                d->child.push_back({});
                d->token.push_back(D::kNone);
            }
            node = d->child[node][size_t(c - '0')];
        }
        d->token[node] = uint16_t(d->rank.size());
        d->rank.push_back(Rank(r));
        d->len.push_back(uint16_t(t.size()));
    }
    const size_t K = d->rank.size();  // at least the ten digits: every single byte is a token
    d->next_prefix.assign(K, D::kNone);
    for (size_t a = 0; a < K; ++a) {
        const std::string& t = decode_[d->rank[a]];
        uint16_t node = 0;
        for (size_t k = 0; k + 1 < t.size(); ++k) {
            node = d->child[node][size_t(t[k] - '0')];
            if (d->token[node] != D::kNone) d->next_prefix[a] = d->token[node];
        }
    }
    d->first3.resize(1000);
    for (int v = 0; v < 1000; ++v) {
        const uint8_t digits[3] = {uint8_t(v / 100), uint8_t(v / 10 % 10), uint8_t(v % 10)};
        uint16_t node = 0, best = D::kNone;
        for (const uint8_t digit : digits) {
            node = d->child[node][digit];
            if (node == 0) break;
            if (d->token[node] != D::kNone) best = d->token[node];
        }
        d->first3[size_t(v)] = uint32_t(node) << 16 | best;
    }
    d->row_words = (K + 31) / 32;
    d->pairs.reset(new std::atomic<uint64_t>[K * d->row_words]());
    digits_ = std::move(d);
}

bool Encoder::backtrack_digits(const uint8_t* p, size_t n, std::vector<Rank>& out) const {
    DigitTables* d = digits_.get();
    if (d == nullptr) return false;
    constexpr uint16_t kNone = DigitTables::kNone;
    const auto longest = [d, p, n](size_t pos) {
        uint16_t node = 0, best = kNone;
        size_t k = pos;
        if (pos + 3 <= n) {  // most tokens end within three digits: one load instead of three
            const uint32_t e = d->first3[(p[pos] - '0') * 100 + (p[pos + 1] - '0') * 10 + (p[pos + 2] - '0')];
            best = uint16_t(e);
            node = uint16_t(e >> 16);
            if (node == 0) return best;
            k = pos + 3;
        }
        for (; k < n; ++k) {
            node = d->child[node][p[k] - '0'];
            if (node == 0) break;
            if (d->token[node] != kNone) best = d->token[node];
        }
        return best;
    };
    // Threads share the matrix: each word is read and or-ed atomically, and a pair's bits, once known, never change.
    const auto valid = [this, d](uint16_t a, uint16_t b) {
        std::atomic<uint64_t>& word = d->pairs[a * d->row_words + b / 32];
        const unsigned shift = 2 * (b % 32);
        const uint64_t state = word.load(std::memory_order_relaxed) >> shift;
        if (state & 1) return (state >> 1) & 1;
        const uint64_t is_valid = valid_pair(d->rank[a], d->rank[b]);
        word.fetch_or((1 | is_valid << 1) << shift, std::memory_order_relaxed);
        return is_valid;
    };
    Scratch& scratch = thread_scratch();
    std::vector<uint16_t>& st = scratch.digits;
    st.clear();
    if (!backtrack_walk(n, st, scratch.dead, kNone, longest, valid, [d](uint16_t t) { return d->next_prefix[t]; },
                        [d](uint16_t t) { return size_t(d->len[t]); }))
        return false;
    const size_t start = out.size();
    out.resize(start + st.size());
    for (size_t k = 0; k < st.size(); ++k) out[start + k] = d->rank[st[k]];
    return true;
}

// -- long pieces ---------------------------------------------------------------------------------------------------
//
// A long piece is encoded window by window, each window small enough to stay in L1. Merging a window gives BPE of
// the window alone; its last tokens may differ from the whole piece's, because what follows the window could have
// merged with them, so only the tokens that end at least `margin_` bytes before the window's end are kept, and the
// next window starts where they stop. The result is exact, not a guess: by the fact backtracking rests on, tokens
// that are each BPE's encoding of themselves, with every two neighbours BPE's encoding of their joined bytes, are
// the encoding of the whole. Neighbours inside a window are (they come from one BPE run), so only the seams need
// checking. A seam that fails (it has not on any text we have tried, at a 16-byte margin) sends the whole piece
// to backtracking, so the worst case stays linear.
//
// Each window is merged, or backtracked when the last window's tokens were long (runs like "0000..." or words
// without spaces): merging costs per byte, backtracking per token, and backtracking's retries cost most where
// tokens are short.
static constexpr size_t kBacktrackBytesPerToken = 3;

// One run of windows over p[pos, end): where it stands, and where its tokens go.
struct Encoder::Windows {
    size_t pos, end;
    std::vector<Rank>* out;
    size_t first_out;  // out's size when the run started: a seam is checked only against tokens of this run
    bool by_backtracking = false;
    size_t last_pos = 0, last_len = 0;  // the last window encoded, whose tokens are still in its buffer

    // Whether p[pos, pos + len) repeats the last window byte for byte, so that the buffer's tokens are its encoding
    // too: a run of one letter (or of any period the windows' step is a multiple of) costs a compare per window.
    bool repeats(const uint8_t* p, size_t len) const {
        return len == last_len && std::memcmp(p + last_pos, p + pos, len) == 0;
    }
    void encoded(size_t len) { last_pos = pos, last_len = len; }
};

// The window p[w.pos, w.pos + len) has been encoded as `tokens`: keep those that end at least margin_ bytes before
// the window's end (all of them if it ends the run), starting with the first that starts at or after `from`.
// Returns false if a seam fails (or nothing starts at or after `from`); `from` comes back as where the kept tokens
// start.
bool Encoder::advance(Windows& w, size_t len, const std::vector<Rank>& tokens, size_t& from) const {
    size_t keep = tokens.size(), end = w.pos + len;
    if (end < w.end)
        while (keep > 1 && end + margin_ > w.pos + len) end -= token_len_[tokens[--keep]];
    size_t first = 0, at = w.pos;
    while (first < keep && at < from) at += token_len_[tokens[first++]];
    if (first == keep) return false;
    from = at;
    if (w.out->size() > w.first_out && !valid_pair(w.out->back(), tokens[first])) return false;
    w.out->insert(w.out->end(), tokens.begin() + first, tokens.begin() + keep);
    w.by_backtracking = end - at >= kBacktrackBytesPerToken * (keep - first);
    w.pos = end;
    return true;
}

bool Encoder::encode_long(const uint8_t* p, size_t n, std::vector<Rank>& out) const {
    if (uint8_t(p[0] - '0') < 10 && ascii_run_end(p, n, 0, false) == n && backtrack_digits(p, n, out)) return true;
    if (window_ == 0) return backtrack(p, n, out);
    const size_t start = out.size();
    Scratch& scratch = thread_scratch();
    std::vector<Rank>* tokens = scratch.window;
    // A piece of at least four windows is encoded as two halves at once, their windows' merges interleaved (see
    // merge2). The second half starts mid-token, so its first margin_ bytes are dropped: the first half runs up to
    // the first token the second keeps, and that seam is checked like any other.
    if (n / 4 >= window_) {  // (not n >= 4 * window_, which a huge window would overflow)
        std::vector<Rank>& tail = scratch.tail;
        tail.clear();
        Windows a{0, n, &out, start}, b{n / 2, n, &tail, 0};
        bool joined = false;  // whether a.end is b's first kept token yet (known after b's first window)
        bool ok = true;
        while (ok && (a.pos < a.end || b.pos < b.end)) {
            const size_t len_a = a.pos < a.end ? std::min(a.end - a.pos, window_) : 0;
            const size_t len_b = b.pos < b.end ? std::min(b.end - b.pos, window_) : 0;
            const bool new_a = len_a && !a.repeats(p, len_a), new_b = len_b && !b.repeats(p, len_b);
            if (new_a) tokens[0].clear();
            if (new_b) tokens[1].clear();
            const bool merge_a = new_a && !(a.by_backtracking && backtrack(p + a.pos, len_a, tokens[0]));
            const bool merge_b = new_b && !(b.by_backtracking && backtrack(p + b.pos, len_b, tokens[1]));
            if (merge_a && merge_b) {
                merge2(p + a.pos, len_a, tokens[0], p + b.pos, len_b, tokens[1]);
            } else {
                if (merge_a) merge(p + a.pos, len_a, tokens[0]);
                if (merge_b) merge(p + b.pos, len_b, tokens[1]);
            }
            if (len_a) a.encoded(len_a);
            if (len_b) b.encoded(len_b);
            size_t from = a.pos;
            if (len_a) ok = advance(a, len_a, tokens[0], from);
            from = joined ? b.pos : b.pos + margin_;
            if (ok && len_b) ok = advance(b, len_b, tokens[1], from);
            if (ok && !joined) a.end = from, joined = true;
        }
        if (ok && out.size() > start && valid_pair(out.back(), tail.front())) {
            out.insert(out.end(), tail.begin(), tail.end());
            return true;
        }
        out.resize(start);
        return backtrack(p, n, out);
    }
    Windows w{0, n, &out, start};
    while (w.pos < n) {
        const size_t len = std::min(n - w.pos, window_);
        if (!w.repeats(p, len)) {
            tokens[0].clear();
            if (!w.by_backtracking || !backtrack(p + w.pos, len, tokens[0])) merge(p + w.pos, len, tokens[0]);
            w.encoded(len);
        }
        size_t from = w.pos;
        if (!advance(w, len, tokens[0], from)) {
            out.resize(start);
            return backtrack(p, n, out);
        }
    }
    return true;
}

void Encoder::encode_ordinary(std::string_view text, std::vector<Rank>& out) const {
    const auto* s = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    out.reserve(out.size() + n / 4);
    PieceCache& cache = thread_cache();
    for (size_t i = 0; i < n;) {
        const size_t end = next_pretoken(s, n, i);
        encode_piece(s + i, end - i, out, cache);
        i = end;
    }
}

bool Encoder::decode(const Rank* ids, size_t n, std::string& out, int64_t& bad) const {
    size_t total = 0;
    for (size_t k = 0; k < n; ++k) {
        if (ids[k] >= decode_.size()) {
            bad = int64_t(ids[k]);
            return false;
        }
        total += decode_[ids[k]].size();
    }
    out.reserve(out.size() + total);
    for (size_t k = 0; k < n; ++k) out += decode_[ids[k]];
    return true;
}

}  // namespace gpt2tui
