// gpt2tui._bpe: the native core of the tokenizer.
//
// The byte-level BPE merge loop lands here (its own issue); until then the module carries only what is real:
// the version it was built from, so Python can tell a stale build from a current one.
#include <pybind11/pybind11.h>

#ifndef GPT2TUI_VERSION
#define GPT2TUI_VERSION "unknown"
#endif

PYBIND11_MODULE(_bpe, m) {
    m.doc() = "gpt2tui native tokenizer core";
    m.attr("__version__") = GPT2TUI_VERSION;
}
