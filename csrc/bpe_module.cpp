// gpt2tui._bpe: the pybind11 face of the BPE core. It converts between Python and C++ and releases the GIL around
// the work; every rule about special tokens, surrogates and errors is gpt2tui/tokenizer.py's.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "bpe.h"
#include "unicode_tables.h"

#ifndef GPT2TUI_VERSION
#define GPT2TUI_VERSION "unknown"
#endif

namespace py = pybind11;
using gpt2tui::Encoder;
using gpt2tui::Rank;

namespace {

// The UTF-8 bytes of a str, cached inside the str object by CPython (valid while the str lives). A str holding a
// lone surrogate has no UTF-8 form: that raises UnicodeEncodeError, which the Python layer repairs.
std::string_view utf8_of(const py::handle& text) {
    if (!PyUnicode_Check(text.ptr())) throw py::type_error("expected str");
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return {data, size_t(size)};
}

// One Python int per id, made once and kept for the life of the process: turning ids into a list then costs an
// INCREF per token instead of an allocation (the list of a 1 MB text holds ~250k of them). Called with the GIL held.
const std::vector<PyObject*>& id_objects(size_t n_vocab) {
    static std::vector<PyObject*> ints;
    while (ints.size() < n_vocab) {
        PyObject* v = PyLong_FromSize_t(ints.size());
        if (v == nullptr) throw py::error_already_set();
        ints.push_back(v);
    }
    return ints;
}

py::list to_list(const Encoder& enc, const std::vector<Rank>& ids) {
    const std::vector<PyObject*>& ints = id_objects(enc.n_vocab());
    PyObject* list = PyList_New(Py_ssize_t(ids.size()));
    if (list == nullptr) throw py::error_already_set();
    for (size_t k = 0; k < ids.size(); ++k) {
        PyObject* v = ints[ids[k]];  // the encoder only emits ids of its vocabulary
        Py_INCREF(v);
        PyList_SET_ITEM(list, Py_ssize_t(k), v);
    }
    return py::reinterpret_steal<py::list>(list);
}

// The ids as native uint32 in a bytearray, for numpy.frombuffer (tiktoken's encode_to_numpy): one copy, and no Python
// int per token, which costs as much as the encoding itself on English text.
py::bytearray to_buffer(const Encoder&, const std::vector<Rank>& ids) {
    static_assert(sizeof(Rank) == 4, "the buffer holds uint32 ids");
    return py::bytearray(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(Rank));
}

template <auto Convert>
py::object encode_ordinary(const Encoder& enc, const py::str& text) {
    const std::string_view bytes = utf8_of(text);
    std::vector<Rank> ids;
    {
        py::gil_scoped_release release;
        enc.encode_ordinary(bytes, ids);
    }
    return Convert(enc, ids);
}

// Documents are handed out one at a time to `num_threads` native threads, the calling thread among them. Between
// its own documents the calling thread turns every finished one, in order, into a Python list or buffer (under the
// GIL, which it takes only for that), so that building them, which only it may do, overlaps the encoding instead of
// following it.
template <auto Convert>
py::list encode_ordinary_batch(const Encoder& enc, const py::list& texts, int num_threads) {
    const size_t n = texts.size();
    // The inputs point into each str's UTF-8 buffer, which lives as long as the str. While the GIL is released another
    // thread may replace the list's items and free a str nothing else holds, so the batch holds its own references:
    // it encodes the texts the list held when it was called.
    std::vector<py::object> held;
    held.reserve(n);
    std::vector<std::string_view> inputs;
    inputs.reserve(n);
    size_t total = 0;
    for (const auto& t : texts) {
        held.push_back(py::reinterpret_borrow<py::object>(t));
        inputs.push_back(utf8_of(held.back()));
        total += inputs.back().size();
    }
    std::vector<std::vector<Rank>> results(n);
    std::unique_ptr<std::atomic<bool>[]> done(new std::atomic<bool>[n]);
    for (size_t k = 0; k < n; ++k) done[k].store(false, std::memory_order_relaxed);
    py::list out(n);
    // A thread costs ~20 us to start, the time to encode a few KB: small batches get fewer, or none.
    constexpr size_t kBytesPerThread = 16 * 1024;
    const size_t workers = std::max<size_t>(
        1, std::min({size_t(std::max(num_threads, 1)), n, total / kBytesPerThread}));
    std::atomic<size_t> next{0};
    // The first error of any thread (the core's std::bad_alloc or length_error, or a Python error while building a
    // list) stops the hand-out of work and is raised once every thread has stopped; an exception must never leave a
    // worker thread, which would end the process.
    std::mutex error_mutex;
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    auto fail = [&] {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
        next = n;
    };
    auto encode_one = [&](size_t k) {
        enc.encode_ordinary(inputs[k], results[k]);
        done[k].store(true, std::memory_order_release);
    };
    size_t converted = 0;  // documents [0, converted) are in `out`; only the calling thread touches this
    // Convert the finished documents at the front (all that remain, waiting for each, when `all` is set). Called
    // without the GIL.
    auto convert = [&](bool all) {
        size_t ready = converted;
        while (ready < n && done[ready].load(std::memory_order_acquire)) ++ready;
        if (all) ready = n;
        if (ready == converted) return;
        py::gil_scoped_acquire acquire;
        for (; converted < ready; ++converted) {
            while (!done[converted].load(std::memory_order_acquire)) {
                if (failed) return;  // a document another thread gave up on will never be done
                std::this_thread::yield();
            }
            out[converted] = Convert(enc, results[converted]);
            std::vector<Rank>().swap(results[converted]);
        }
    };
    {
        py::gil_scoped_release release;
        std::vector<std::thread> pool;
        for (size_t w = 1; w < workers; ++w)
            pool.emplace_back([&] {
                try {
                    for (size_t k = next++; k < n; k = next++) encode_one(k);
                } catch (...) {
                    fail();
                }
            });
        try {
            for (size_t k = next++; k < n; k = next++) {
                encode_one(k);
                if (workers > 1) convert(false);
            }
            convert(true);
        } catch (...) {
            fail();
        }
        for (auto& t : pool) t.join();
    }
    if (error) std::rethrow_exception(error);
    return out;
}

// The bytes of a sequence of ids. Each is read as a C integer straight from the list (or tuple; another sequence is
// copied into one first): a conversion through a vector of int64 first, or int() on each in Python, cost twice the
// lookups and the join. A non-integer raises TypeError; an id outside the vocabulary, however large, ValueError.
py::bytes decode_bytes(const Encoder& enc, const py::handle& ids) {
    PyObject* seq = PySequence_Fast(ids.ptr(), "token ids must be a sequence of ints");
    if (seq == nullptr) throw py::error_already_set();
    const py::object owned = py::reinterpret_steal<py::object>(seq);
    const size_t n = size_t(PySequence_Fast_GET_SIZE(seq));
    PyObject** items = PySequence_Fast_ITEMS(seq);
    std::vector<Rank> ranks(n);
    const long long limit = (long long)enc.n_vocab();
    for (size_t k = 0; k < n; ++k) {
        int overflow = 0;
        const long long id = PyLong_AsLongLongAndOverflow(items[k], &overflow);
        if (id == -1 && PyErr_Occurred()) throw py::error_already_set();
        if (overflow != 0 || id < 0 || id >= limit) {
            throw py::value_error("token id " + std::string(py::str(items[k])) +
                                  " is out of range for this vocabulary (0 to " + std::to_string(limit - 1) + ")");
        }
        ranks[k] = Rank(id);
    }
    std::string out;
    int64_t bad = -1;
    {
        py::gil_scoped_release release;
        enc.decode(ranks.data(), ranks.size(), out, bad);
    }
    return py::bytes(out);
}

}  // namespace

PYBIND11_MODULE(_bpe, m) {
    m.doc() = "gpt2tui native tokenizer core: GPT-2 byte-level BPE (pre-tokenisation and merges only)";
    m.attr("__version__") = GPT2TUI_VERSION;
    m.attr("UNICODE_VERSION") = gpt2tui::kUnicodeVersion;

    py::class_<Encoder>(m, "Encoder")
        .def(py::init([](const std::vector<py::bytes>& tokens, const std::vector<py::bytes>& extra,
                         size_t long_piece_len, size_t window, size_t margin) {
                 std::vector<std::string> t(tokens.begin(), tokens.end()), e(extra.begin(), extra.end());
                 py::gil_scoped_release release;
                 return new Encoder(std::move(t), std::move(e), long_piece_len, window, margin);
             }),
             py::arg("tokens"), py::arg("extra") = std::vector<py::bytes>{}, py::arg("long_piece_len") = 64,
             py::arg("window") = 256, py::arg("margin") = 16,
             "tokens[r]: bytes of the mergeable token of rank r; extra: bytes of the ids after them (special "
             "tokens). Pieces of at least long_piece_len bytes are encoded in windows of `window` bytes whose last "
             "`margin` bytes are redone with the next window (window=0: by backtracking the whole piece); shorter "
             "ones by merging in rank order. Every setting gives the same ids; tests vary them to reach each path.")
        .def("encode_ordinary", &encode_ordinary<to_list>, py::arg("text"),
             "ids of a str, with no special-token handling")
        .def("encode_ordinary_batch", &encode_ordinary_batch<to_list>, py::arg("texts"), py::arg("num_threads") = 8,
             "encode_ordinary over a list of str, in native threads")
        .def("encode_ordinary_buffer", &encode_ordinary<to_buffer>, py::arg("text"),
             "encode_ordinary's ids as native uint32 in a bytearray (for numpy.frombuffer)")
        .def("encode_ordinary_batch_buffers", &encode_ordinary_batch<to_buffer>, py::arg("texts"),
             py::arg("num_threads") = 8, "encode_ordinary_batch with each document's ids as encode_ordinary_buffer's")
        .def("decode_bytes", &decode_bytes, py::arg("ids"), "the bytes of a sequence of ids")
        .def_property_readonly("n_vocab", &Encoder::n_vocab);
}
