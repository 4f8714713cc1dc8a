// The C++ BPE core timed without Python: for profiling the merge loop with perf or callgrind, where a Python
// process would bury it. Not a benchmark of record (those are bench_tokenizer.py's, against tiktoken).
//
//   g++ -O3 -g -std=c++17 -Icsrc benchmarks/profile_tokenizer.cpp csrc/bpe.cpp -o build/profile_tokenizer
//   build/profile_tokenizer FILE [REPEATS] [WINDOW] [MARGIN]
//   perf record build/profile_tokenizer FILE 20 && perf report
//
// Prints the best MB/s of REPEATS runs, tokens, bytes per token, and a checksum of the ids, which must not change
// when the core is made faster.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "bpe.h"

static std::string base64_decode(const std::string& s) {
    static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    uint32_t value = 0;
    int bits = -8;
    for (char c : s) {
        const size_t v = alphabet.find(c);
        if (v == std::string::npos) break;
        value = (value << 6) | uint32_t(v);
        bits += 6;
        if (bits >= 0) {
            out.push_back(char((value >> bits) & 0xFF));
            bits -= 8;
        }
    }
    return out;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s FILE [REPEATS] [WINDOW] [MARGIN]\n", argv[0]);
        return 2;
    }
    const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
    const size_t window = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 256;
    const size_t margin = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 16;

    std::ifstream vocab("gpt2tui/assets/gpt2.tiktoken");  // run from the repository root
    if (!vocab) {
        std::fprintf(stderr, "cannot read gpt2tui/assets/gpt2.tiktoken: run from the repository root\n");
        return 2;
    }
    std::vector<std::string> tokens;
    for (std::string line; std::getline(vocab, line);) {
        const size_t space = line.find(' ');
        const size_t rank = std::stoul(line.substr(space + 1));
        if (tokens.size() <= rank) tokens.resize(rank + 1);
        tokens[rank] = base64_decode(line.substr(0, space));
    }
    const gpt2tui::Encoder encoder(tokens, {"<|endoftext|>"}, 64, window, margin);

    std::ifstream file(argv[1], std::ios::binary);
    if (!file) {
        std::fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    std::stringstream buffer;
    buffer << file.rdbuf();
    const std::string text = buffer.str();

    std::vector<gpt2tui::Rank> ids;
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
        ids.clear();
        const auto t0 = std::chrono::steady_clock::now();
        encoder.encode_ordinary(text, ids);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    uint64_t checksum = 0;
    for (const auto id : ids) checksum = checksum * 1000003u + id;
    std::printf("%s: %.1f MB/s, %zu tokens, %.2f bytes/token, checksum %016llx\n", argv[1], text.size() / best / 1e6,
                ids.size(), double(text.size()) / double(ids.size()), (unsigned long long)checksum);
    return 0;
}
