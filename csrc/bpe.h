// GPT-2 byte-level BPE: pre-tokenisation and the merge loop, and nothing else.
//
// Policy (special tokens, what counts as an error, lone surrogates, batching rules) lives in
// gpt2tui/tokenizer.py. This core takes valid-or-not UTF-8 bytes and returns token ids; it never touches a
// Python object, so the binding can release the GIL around it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gpt2tui {

using Rank = uint32_t;
inline constexpr Rank kNoRank = 0xFFFFFFFFu;

// A Bloom filter over 64-bit hashes, blocked in 64-bit words: two bits of one word per key, 20 to 40 bits per key,
// so that only a percent or two of absent keys pass. The maps below ask it first: most keys the encoder looks up are absent, and the
// filter answers those from L2 instead of a probe into a table several times its size.
class Bloom {
  public:
    void reset(size_t n_keys) {
        uint64_t words = 2;  // at least two, so that the shift stays below 64
        shift_ = 63;
        while (words * 64 < 20 * n_keys) words <<= 1, --shift_;
        words_.assign(words, 0);
    }
    void add(uint64_t h) { words_[h >> shift_] |= bits(h); }
    bool may_contain(uint64_t h) const { return (words_[h >> shift_] & bits(h)) == bits(h); }

  private:
    static uint64_t bits(uint64_t h) { return (uint64_t(1) << (h & 63)) | (uint64_t(1) << ((h >> 6) & 63)); }
    std::vector<uint64_t> words_ = std::vector<uint64_t>(2, ~uint64_t(0));  // lets every key pass until reset()
    int shift_ = 63;
};

// Open-addressing hash map from byte strings to ranks; the strings live in one arena.
class BytesMap {
  public:
    void build(const std::vector<std::string>& keys);  // value of keys[i] is i
    static uint64_t hash(const uint8_t* p, size_t n);
    Rank find(const uint8_t* p, size_t n, uint64_t h) const;  // h: hash(p, n), which callers may reuse
    Rank find(const uint8_t* p, size_t n) const { return find(p, n, hash(p, n)); }

  private:
    struct Slot {
        uint64_t hash = 0;
        uint64_t key = 0;  // a key of up to 8 bytes itself (see short_key), a longer one's offset in the arena
        uint32_t len = 0;
        Rank rank = kNoRank;
    };
    std::vector<Slot> slots_;
    std::string arena_;
    uint64_t mask_ = 0;
    Bloom filter_;  // most pieces of text like base64 are not tokens
};

// Open-addressing hash map from a pair of token ids to the rank of the token their bytes concatenate to. Each entry
// is one 64-bit word (left id, right id, merged rank). The table is kept at most a quarter full: most lookups then
// end at the first slot, hit or miss, and the lookups that backtracking repeats on the same few pairs stay short.
// (Buckets of eight entries compared without branches measured the same on merging and up to 1.7x slower there.)
class PairMap {
  public:
    static constexpr int kIdBits = 21, kRankBits = 64 - 2 * kIdBits;

    void reserve(size_t n);
    void insert(Rank a, Rank b, Rank merged);
    Rank find(Rank a, Rank b) const {
        const uint64_t h = mix(pack_key(a, b));
        return filter_.may_contain(h) ? probe(pack_key(a, b), h) : kNoRank;
    }

  private:
    Rank probe(uint64_t key, uint64_t h) const {
        for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
            const uint64_t e = entries_[i];
            if (e == kEmpty) return kNoRank;
            if ((e >> kRankBits) == key) return Rank(e & kRankMask);
        }
    }
    // No real key equals an empty entry's: ids stay below 2^kIdBits - 1 (the constructor checks).
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    static constexpr uint64_t kRankMask = (uint64_t(1) << kRankBits) - 1;
    static uint64_t pack_key(Rank a, Rank b) { return (uint64_t(a) << kIdBits) | b; }
    static uint64_t mix(uint64_t k) {
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdULL;
        k ^= k >> 33;
        return k;
    }
    std::vector<uint64_t> entries_;
    uint64_t mask_ = 0;
    Bloom filter_;  // most pairs the merge loop asks about (every new neighbour) are not there
};

struct PieceCache;  // the calling thread's cache of merged pieces (bpe.cpp)

class Encoder {
  public:
    // tokens[r] is the byte string of the mergeable token of rank r; every single byte must be one.
    // extra[i] is the byte string of id tokens.size() + i (special tokens, for decoding only).
    // Pieces of at least `long_piece_len` bytes take the long-piece path (see encode_long): windows of `window`
    // bytes, of which the last `margin` are redone with the next window; window 0 backtracks whole pieces instead.
    // Every setting gives the same ids; tests vary them to reach each path. A vocabulary whose ranks are not a merge
    // list's (a token ranked before a part of its own last merge) keeps every piece on the merge loop.
    Encoder(std::vector<std::string> tokens, std::vector<std::string> extra, size_t long_piece_len = 64,
            size_t window = 256, size_t margin = 16);

    // Append the ids of `text` (UTF-8; invalid bytes are treated as symbols) to `out`.
    void encode_ordinary(std::string_view text, std::vector<Rank>& out) const;
    // The bytes of `ids`; returns false, with `bad` set, on an id outside the vocabulary.
    bool decode(const Rank* ids, size_t n, std::string& out, int64_t& bad) const;

    size_t n_vocab() const { return decode_.size(); }

  private:
    void encode_piece(const uint8_t* p, size_t n, std::vector<Rank>& out, PieceCache& cache) const;
    void encode_uncommon(const uint8_t* p, size_t n, uint64_t h, std::vector<Rank>& out, PieceCache& cache) const;
    bool encode_long(const uint8_t* p, size_t n, std::vector<Rank>& out) const;
    struct Windows;
    bool advance(Windows& w, size_t len, const std::vector<Rank>& tokens, size_t& from) const;
    // Rank order merging; if `last` is given, it receives the two parts of the final merge.
    void merge(const uint8_t* p, size_t n, std::vector<Rank>& out, Rank* last = nullptr) const;
    // Two merges at once, p[0, n) into out and q[0, m) into out2, their steps interleaved.
    void merge2(const uint8_t* p, size_t n, std::vector<Rank>& out, const uint8_t* q, size_t m,
                std::vector<Rank>& out2) const;
    static constexpr size_t kSmallPiece = 16;  // pieces up to this many bytes are merged by scanning, not in a tree
    void merge_small(const uint8_t* p, size_t n, std::vector<Rank>& out, Rank* last) const;
    bool backtrack(const uint8_t* p, size_t n, std::vector<Rank>& out) const;
    // Backtracking over the digit tokens alone, for pieces of ASCII digits (see DigitTables).
    bool backtrack_digits(const uint8_t* p, size_t n, std::vector<Rank>& out) const;
    Rank longest_prefix(const uint8_t* p, size_t n) const;
    bool valid_pair(Rank left, Rank right) const;

    size_t n_mergeable_ = 0;
    uint64_t cache_salt_ = 0;  // keeps this encoder's entries in the per-thread piece cache apart from others
    size_t long_piece_len_, window_, margin_;
    std::vector<std::string> decode_;  // id -> bytes, mergeable tokens then extras
    BytesMap vocab_;
    // Only each token's own last merge: see the constructor for why no other pair of parts can ever merge.
    PairMap pairs_;
    Rank byte_rank_[256];
    std::vector<Rank> byte_pair_rank_;  // (first byte << 8) | second byte -> merged rank: every merge loop starts here
    // For backtracking: each token's last merge (a single byte is its own split), the longest token that is a
    // proper prefix of it, and a byte trie of the tokens that BPE can produce (edges keyed by (node, byte)).
    std::vector<Rank> split_left_, split_right_, next_prefix_;
    std::vector<uint16_t> token_len_;  // bytes per token: the hot loop's lengths, kept apart from the strings
    struct TrieNode {
        uint32_t first_edge;  // this node's edges are edge_byte_/edge_child_[first_edge, first_edge + n_edges)
        uint32_t n_edges;
        Rank token;  // the token spelled by the path to here, or kNoRank
    };
    // Nodes in breadth-first order, so the short prefixes every lookup starts with share a few cache lines.
    std::vector<TrieNode> trie_;
    std::vector<uint8_t> edge_byte_;
    std::vector<uint32_t> edge_child_;
    // The trie's first two levels as direct tables (0: no such node; the root is no one's child). Every lookup
    // starts at the root, whose 256-way fan-out a search would otherwise walk once per token.
    std::vector<uint32_t> level1_;  // first byte -> node
    std::vector<uint32_t> level2_;  // (first byte << 8) | second byte -> node

    // A run of random digits needs a merge every other byte, the most of any text, and its tokens are short. But
    // GPT-2 has only ~1000 digit tokens, so backtracking over them can read its answers from tables: a trie with ten
    // children per node, its first three levels flattened, and a matrix of two bits per pair of digit tokens (known,
    // valid neighbours) that fills in as pairs are first asked about. Null for a vocabulary with too many.
    struct DigitTables {
        static constexpr uint16_t kNone = 0xFFFF, kMaxTokens = 4096;
        std::vector<Rank> rank;                       // compact id -> rank
        std::vector<uint16_t> len, next_prefix;       // compact id -> bytes; the longest proper prefix, or kNone
        std::vector<std::array<uint16_t, 10>> child;  // trie node -> its child per digit (0: none; 0 is the root)
        std::vector<uint16_t> token;                  // trie node -> compact id of the token it spells, or kNone
        std::vector<uint32_t> first3;                 // three digits -> (node reached << 16) | longest token in them
        size_t row_words = 0;
        std::unique_ptr<std::atomic<uint64_t>[]> pairs;  // pair (a, b) at bits 2b, 2b + 1 of row a: known, valid
    };
    void build_digit_tables();
    std::unique_ptr<DigitTables> digits_;
};

// Byte length of the pre-token that starts at `i` (GPT-2's pattern, matched by hand).
size_t next_pretoken(const uint8_t* s, size_t n, size_t i);

}  // namespace gpt2tui
