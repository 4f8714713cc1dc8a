"""A large, varied, deterministic text corpus for checking the BPE encoders against tiktoken, id for id.

Everything is generated here from a seed: no data files, no network. `build_corpus()` gives many separate documents
(English prose, source code, JSON, a dozen scripts, emoji sequences, combining marks, every kind of white space and
its look-alikes, contractions, digits mixed with letters, punctuation runs, very long words); `pathological(n)` gives
the single-piece and many-piece worst cases at a chosen size. The literal special token `<|endoftext|>` never occurs
in either: tests that want it put it there themselves.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import string
import unicodedata

# -- character classes -------------------------------------------------------------------------------------------------

# Every character with the Unicode White_Space property.
WHITE_SPACE = (
    [chr(c) for c in range(0x09, 0x0E)]
    + ["\u0020", "\u0085", "\u00a0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]
    + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
)
# Characters that look like, or used to be, white space but are not White_Space (\s does not match them).
WHITE_SPACE_LOOKALIKES = ["\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u200b", "\ufeff"]
ALL_SPACES = WHITE_SPACE + WHITE_SPACE_LOOKALIKES

APOSTROPHES = ["'", "\u2019", "''"]
CONTRACTION_SUFFIXES = ["s", "S", "t", "T", "re", "RE", "Re", "rE", "ve", "VE", "Ve", "ll", "LL", "Ll", "d", "D",
                        "m", "M"]

WORDS = """
the of and to in is was that for it with as on be at by this had not are but from or have an they which one you
were her all she there would their we him been has when who will more no if out so said what up its about into than
them can only other new some could time these two may then do first any my now such like our over man me even most
made after also did many before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came right used take three
tokenizer merge rank vocabulary encoder decoder byte pair encoding model weights gradient attention kernel cache
thread batch benchmark throughput latency regression surrogate whitespace punctuation apostrophe contraction
naïve café résumé coöperate façade jalapeño Zürich Ångström Øresund Łódź São Paulo Dvořák Brontë Mötley piñata
""".split()
NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Mallory", "Trent", "Zoë", "José", "Ærøskøbing", "O'Brien",
         "McDonald", "van der Berg", "DiCaprio", "d'Artagnan", "Nguyễn", "Øyvind", "Ólafur", "Schrödinger"]
TLDS = ["com", "org", "net", "io", "dev", "co.uk", "de", "jp", "рф", "中国"]


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


# -- English prose -----------------------------------------------------------------------------------------------------


def _number(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return str(rng.randrange(10))
    if kind == 1:
        return f"{rng.randrange(10**6):,}"
    if kind == 2:
        return f"{rng.uniform(0, 1000):.{rng.randrange(1, 6)}f}"
    if kind == 3:
        return f"{rng.randrange(101)}%"
    if kind == 4:
        return f"${rng.randrange(10**5)}.{rng.randrange(100):02d}"
    if kind == 5:
        return f"-{rng.randrange(1000)}"
    if kind == 6:
        return f"{rng.randrange(1, 10)}e{rng.choice(['-', '+', ''])}{rng.randrange(40)}"
    if kind == 7:
        return f"#{rng.randrange(10000)}"
    if kind == 8:
        return f"{rng.randrange(1, 13)}:{rng.randrange(60):02d}{rng.choice(['am', 'pm', ' AM', ' p.m.', ''])}"
    return str(rng.randrange(10**rng.randrange(2, 20)))


def _date(rng: random.Random) -> str:
    y, m, d = rng.randrange(1900, 2100), rng.randrange(1, 13), rng.randrange(1, 29)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
    return rng.choice([
        f"{y}-{m:02d}-{d:02d}", f"{d}/{m}/{y}", f"{m}/{d}/{y % 100:02d}", f"{months[m - 1]} {d}, {y}",
        f"{d} {months[m - 1][:3]}. {y}", f"{y}-{m:02d}-{d:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        f"the {d}{['th', 'st', 'nd', 'rd'][d % 10 if d % 10 < 4 and d // 10 != 1 else 0]} of {months[m - 1]}",
    ])


def _url(rng: random.Random) -> str:
    host = ".".join(rng.choice(WORDS).lower() for _ in range(rng.randrange(1, 3)))
    path = "/".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 4)))
    query = rng.choice(["", f"?q={_word(rng)}&page={rng.randrange(50)}", f"#section-{rng.randrange(9)}",
                        f"?id={rng.getrandbits(64):x}"])
    return f"{rng.choice(['https', 'http', 'ftp'])}://{rng.choice(['', 'www.'])}{host}.{rng.choice(TLDS)}/{path}{query}"


def _email(rng: random.Random) -> str:
    user = rng.choice([_word(rng), f"{_word(rng)}.{_word(rng)}", f"{_word(rng)}+{_word(rng)}",
                       f"{_word(rng)}_{rng.randrange(100)}"])
    return f"{user}@{_word(rng).lower()}.{rng.choice(TLDS)}"


def _contraction(rng: random.Random) -> str:
    base = rng.choice(["it", "IT", "It", "they", "THEY", "we", "you", "I", "she", "he", "don", "DON", "can",
                       "isn", "won", "there", "that", "who", "Bob", "O", "y", "rock", "n"])
    suffix = rng.choice(CONTRACTION_SUFFIXES)
    return f"{base}{rng.choice(APOSTROPHES)}{suffix}"


def _mixed_digits(rng: random.Random) -> str:
    return rng.choice([
        f"abc{rng.randrange(1000)}def", f"{rng.randrange(100)}th", "3.14159", "2.718281828", "1,000,000",
        f"0x{rng.getrandbits(32):X}", "0xFF", "0b1011", f"v{rng.randrange(5)}.{rng.randrange(20)}.{rng.randrange(9)}",
        "v2.0.1", "٣", "٣٤٥", "५", "१२३४", "１２３", "ＡＢＣ１２３", "x²", "E=mc²", "H₂O", "½", "¾ cup", "⅞", "Ⅻ",
        "Ⅳ", "ⅲ", "①②③", "𝟙𝟚𝟛", "𝐀𝐁𝐂", "IPv6 ::1", "127.0.0.1", "192.168.0.255:8080", "4K", "1080p", "MP3",
        "COVID-19", "B2B", "24/7", "9-5", "A4", "x86_64", "i18n", "l10n", "3D", "2nd", "123abc", "abc123", "a1b2c3",
        f"{rng.randrange(10**9):09d}", "+1 (555) 010-9999", "ISBN 978-3-16-148410-0", "٠١٢٣٤٥٦٧٨٩", "๐๑๒๓",
    ])


def _sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randrange(3, 20)):
        r = rng.random()
        if r < 0.62:
            words.append(_word(rng))
        elif r < 0.68:
            words.append(rng.choice(NAMES))
        elif r < 0.74:
            words.append(_number(rng))
        elif r < 0.77:
            words.append(_date(rng))
        elif r < 0.79:
            words.append(_url(rng))
        elif r < 0.81:
            words.append(_email(rng))
        elif r < 0.87:
            words.append(_contraction(rng))
        elif r < 0.91:
            words.append(_mixed_digits(rng))
        elif r < 0.94:
            q = rng.choice([('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("«", "»"),
                            ("„", "“"), ("`", "`")])
            words.append(f"{q[0]}{_word(rng)} {_word(rng)}{q[1]}")
        elif r < 0.97:
            b = rng.choice(["()", "[]", "{}", "<>"])
            words.append(f"{b[0]}{_word(rng)}{rng.choice(['', ' ' + _word(rng)])}{b[1]}")
        else:
            words.append(rng.choice(["--", "—", "–", "-", "/", "&", "…", "...", "*", "**", "_", "@", "#", "~"]))
        if rng.random() < 0.12:
            words[-1] += rng.choice([",", ";", ":", ",", " -"])
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice([".", ".", ".", "!", "?", "?!", "...", "…", ".\"", "!)", ":"])


def prose(rng: random.Random) -> str:
    paragraphs = []
    for _ in range(rng.randrange(1, 6)):
        paragraphs.append(" ".join(_sentence(rng) for _ in range(rng.randrange(1, 8))))
    sep = rng.choice(["\n\n", "\n", "\n\n\n", "\r\n\r\n", " \n\n", "\n \n"])
    text = sep.join(paragraphs)
    if rng.random() < 0.2:
        text = rng.choice(["", " ", "  ", "\n", "\n\n", "\t"]) + text + rng.choice(["", " ", "\n", "\n\n", "   "])
    return text


# -- source code -------------------------------------------------------------------------------------------------------

PYTHON = '''\
import os
from dataclasses import dataclass, field


@dataclass
class {Name}Config:
    """Settings for the {name} stage ({n} items)."""

    path: str = "/var/lib/{name}/data.bin"
    retries: int = {n}
    ratio: float = {f}
    tags: list[str] = field(default_factory=lambda: ["{name}", '{word}'])

    def load(self, *, strict: bool = False) -> dict[str, int]:
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no such file: {{self.path!r}}")
        with open(self.path, "rb") as fh:
            data = fh.read()
        counts = {{}}
        for i, b in enumerate(data):
            counts[chr(b)] = counts.get(chr(b), 0) + 1  # tally
        return counts if strict else {{k: v for k, v in counts.items() if v > {n}}}


def main(argv=None):
    cfg = {Name}Config()
    print(f"{{cfg.ratio:.3f}}", cfg.load()[:{n}], sep="\\t")
    return 0 if cfg.retries >= 0 else -1


if __name__ == "__main__":
    raise SystemExit(main())
'''

C = '''\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* {name}: count the bytes of a file, {n} at a time. */
typedef struct {{
    size_t len;
    unsigned char *buf;   // owned
}} {name}_t;

static int {name}_read(const char *path, {name}_t *out)
{{
	FILE *fp = fopen(path, "rb");
	if (!fp) {{
		perror("fopen");
		return -1;
	}}
	out->buf = malloc({n});
	out->len = fread(out->buf, 1, {n}, fp);
	fclose(fp);
	return out->len > 0 ? 0 : -2;
}}

int main(int argc, char **argv)
{{
	{name}_t t = {{0}};
	unsigned long counts[256] = {{0}};
	if (argc < 2 || {name}_read(argv[1], &t) != 0)
		return EXIT_FAILURE;
	for (size_t i = 0; i < t.len; ++i)
		counts[t.buf[i]]++;
	printf("%zu bytes, %lu spaces, ratio=%.2f\\n", t.len, counts[' '], {f});
	free(t.buf);
	return EXIT_SUCCESS;
}}
'''

JS = '''\
'use strict';
const {{ readFile }} = require('fs/promises');

/**
 * {Name}: fetch and tally `{word}` entries.
 * @param {{string}} url
 * @returns {{Promise<Map<string, number>>}}
 */
async function {name}(url, opts = {{ retries: {n}, ratio: {f} }}) {{
  const res = await fetch(`${{url}}?limit=${{opts.retries}}`);
  if (!res.ok) throw new Error(`HTTP ${{res.status}}: ${{res.statusText}}`);
  const items = (await res.json()).items ?? [];
  const tally = new Map();
  for (const {{ key, value = 0 }} of items) {{
    tally.set(key, (tally.get(key) || 0) + value * opts.ratio);
  }}
  return tally;
}}

export default {name};
console.log([...'{word}'].map((c) => c.charCodeAt(0) === 0x20 ? '_' : c).join(''));
'''

RUST = '''\
use std::collections::HashMap;
use std::io::{{self, Read}};

/// {Name} counts the words in standard input; at most {n} are kept.
#[derive(Debug, Default, Clone)]
pub struct {Name}<'a> {{
    counts: HashMap<&'a str, usize>,
    ratio: f64,
}}

impl<'a> {Name}<'a> {{
    pub fn new() -> Self {{
        Self {{ counts: HashMap::new(), ratio: {f} }}
    }}

    pub fn add(&mut self, text: &'a str) -> &mut Self {{
        for w in text.split_whitespace().take({n}) {{
            *self.counts.entry(w).or_insert(0) += 1;
        }}
        self
    }}
}}

fn main() -> io::Result<()> {{
    let mut s = String::new();
    io::stdin().read_to_string(&mut s)?;
    let mut c = {Name}::new();
    c.add(&s);
    println!("{{:?}} {{:.2}}", c.counts.len(), c.ratio);
    Ok(())
}}
'''

SHELL = '''\
#!/usr/bin/env bash
set -euo pipefail
# {name}: sync {n} files and report.

SRC="${{1:-/srv/{name}}}"
DEST=${{2:-$HOME/backup}}
for f in "$SRC"/*.{{txt,md,json}}; do
	[[ -e "$f" ]] || continue
	if ! rsync -az --partial "$f" "$DEST/"; then
		echo "failed: $f" >&2 && exit 1
	fi
done
count=$(find "$DEST" -type f | wc -l)
printf '%s: %d files (ratio %.2f)\\n' "{name}" "$count" {f}
awk -F'\\t' '{{ sum += $2 }} END {{ print sum / NR }}' "$DEST/stats.tsv" | tee -a log.txt
echo 'it'"'"'s done' && grep -E '^[[:space:]]*#' "$0" | sed 's/^# *//' || true
'''

CODE_TEMPLATES = [PYTHON, C, JS, RUST, SHELL]


def code(rng: random.Random) -> str:
    name = "".join(c for c in rng.choice(WORDS).lower() if c.isascii() and c.isalpha()) or "thing"
    text = rng.choice(CODE_TEMPLATES).format(
        name=name, Name=name.capitalize(), word=rng.choice(WORDS), n=rng.randrange(1, 100000), f=rng.random())
    lines = text.split("\n")
    indent = rng.choice(["keep", "tabs", "two", "eight", "mixed"])
    out = []
    for line in lines:
        stripped = line.lstrip(" \t")
        depth = len(line) - len(stripped)
        if indent == "tabs":
            line = "\t" * (depth // 4 or (depth > 0)) + stripped
        elif indent == "two":
            line = " " * (depth // 2) + stripped
        elif indent == "eight":
            line = " " * (depth * 2) + stripped
        elif indent == "mixed" and depth:
            line = rng.choice(["\t", "    ", " \t", "\t  "]) * max(1, depth // 4) + stripped
        if rng.random() < 0.15:
            line += rng.choice([" ", "  ", "\t", " \t ", "    "])  # trailing white space
        out.append(line)
    newline = rng.choice(["\n", "\n", "\r\n"])
    text = newline.join(out)
    if rng.random() < 0.3:
        text = text.rstrip("\n") + rng.choice(["", "\n\n\n", "\n   \n", "\r\n"])
    return text


# -- JSON --------------------------------------------------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 3 or r < 0.45:
        return rng.choice([
            lambda: rng.randrange(-10**6, 10**6), lambda: rng.uniform(-1e3, 1e3), lambda: rng.random() < 0.5,
            lambda: None, lambda: _word(rng), lambda: _sentence(rng), lambda: rng.choice(PHRASES_FLAT),
            lambda: rng.choice(EMOJI), lambda: _url(rng), lambda: _date(rng), lambda: "",
            lambda: rng.choice(ALL_SPACES) * rng.randrange(1, 4), lambda: rng.uniform(-1, 1) * 10 ** rng.randrange(-30, 30),
        ])()
    if r < 0.75:
        return {_word(rng) + rng.choice(["", "_id", "Count", "-x", str(rng.randrange(9))]): _json_value(rng, depth + 1)
                for _ in range(rng.randrange(0, 6))}
    return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]


def json_doc(rng: random.Random) -> str:
    value = {_word(rng): _json_value(rng, 1) for _ in range(rng.randrange(1, 8))}
    style = rng.randrange(4)
    ensure_ascii = rng.random() < 0.3
    if style == 0:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii)
    if style == 1:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    if style == 2:
        return json.dumps(value, indent=rng.choice([2, 4]), ensure_ascii=ensure_ascii, sort_keys=True)
    return json.dumps(value, indent="\t", ensure_ascii=ensure_ascii) + "\n"


# -- other scripts and languages -----------------------------------------------------------------------------------------

PHRASES = {
    "zh": ["我们今天去公园散步，天气很好。", "机器学习是人工智能的一个分支。", "这个分词器必须和参考实现完全一致！",
           "他说：“你好吗？”", "二〇二四年三月十五日", "價格是一百二十三元（含稅）。"],
    "ja": ["今日はいい天気ですね。", "東京スカイツリーの高さは634メートルです。", "カタカナとひらがなと漢字が混ざっています。",
           "「こんにちは」と彼女は言った。", "ｶﾀｶﾅ半角もあります", "ヴァイオリンを弾きます〜♪"],
    "ko": ["안녕하세요, 만나서 반갑습니다.", "한국어는 한글로 씁니다.", "오늘 날씨가 정말 좋네요!", "서울특별시 강남구 123번지"],
    "ar": ["مرحبا بالعالم", "اللغة العربية تكتب من اليمين إلى اليسار.", "السَّلَامُ عَلَيْكُمْ وَرَحْمَةُ اللهِ",
           "العدد ١٢٣٤ والنسبة ٥٠٪؟", "كِتَابٌ جَمِيلٌ"],
    "he": ["שלום עולם", "עברית נכתבת מימין לשמאל.", "בְּרֵאשִׁית בָּרָא אֱלֹהִים", "מה שלומך? \"טוב\""],
    "hi": ["नमस्ते दुनिया", "हिन्दी देवनागरी लिपि में लिखी जाती है।", "क्षत्रिय ज्ञान श्री", "१२३ रुपये॥"],
    "th": ["สวัสดีครับ", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ", "กรุงเทพมหานคร อมรรัตนโกสินทร์", "๑๒๓ บาท"],
    "ru": ["Привет, мир!", "Съешь же ещё этих мягких французских булок, да выпей чаю.", "ЁЛКА и ёлка — это одно и то же?",
           "В 2024 г. было 366 дней."],
    "uk": ["Ґава їсть щедрий борщ.", "Привіт, як справи?"],
    "el": ["Γειά σου Κόσμε", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "ΑΒΓΔ αβγδ ς ΐ ΰ;"],
    "ka": ["გამარჯობა მსოფლიო", "ქართული ენა ძალიან ლამაზია.", "ᲒᲐᲛᲐᲠᲯᲝᲑᲐ"],
    "hy": ["Բարեւ աշխարհ", "Հայերեն լեզուն ունի իր այբուբենը։", "Ողջույն։"],
    "am": ["ሰላም ልዑል", "አማርኛ በግዕዝ ፊደል ይጻፋል።", "፩፪፫ ብር"],
    "ta": ["வணக்கம் உலகம்", "தமிழ் ஒரு பழமையான மொழி.", "௧௨௩ ரூபாய்"],
    "vi": ["Xin chào thế giới", "Tiếng Việt có nhiều dấu thanh: ầ ẫ ẩ ậ ắ ằ ẳ ẵ ặ.", "Người đẹp ở đâu? Ở Hà Nội!",
           "Chữ Quốc ngữ rất hay."],
    "tr": ["İstanbul'da ılık bir şubat günü.", "IĞDIR ığdır Şişli"],
    "de": ["Straße, Maß und Größe; ÄÖÜ äöü ß ẞ.", "Ich hab's dir gesagt!"],
    "fr": ["L'été à l'hôtel « Œuvre » coûte 12 €.", "Qu'est-ce que c'est ?"],
    "es": ["¿Dónde está el niño? ¡Aquí!", "El pingüino comió ñoquis."],
    "pl": ["Zażółć gęślą jaźń.", "Łódź i Gdańsk"],
    "sv": ["Räksmörgås på Åland"],
    "misc": ["ℌ𝔢𝔩𝔩𝔬 𝕨𝕠𝕣𝕝𝕕", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ！", "ǅungla ǈ ǋ", "ﬁ ﬂ ﬃ ligatures", "Ω Ω Å Å µ μ",
             "𐍈𐌰𐌹𐍃 Gothic", "𓀀𓀁 hieroglyphs", "ᚠᚢᚦᚨᚱᚲ runes", "ꙮ", "⠓⠑⠇⠇⠕ braille", "∀x∈ℝ: x²≥0 ∧ ∑ᵢ aᵢ ≤ ∞",
             "→ ← ↑ ↓ ⇒ ⇔ ∴ ∵", "♠♣♥♦ ♪♫ ☀☁☂ ★☆", "™ © ® ° ± × ÷ § ¶ † ‡ • ‰ ′ ″"],
}
PHRASES_FLAT = [p for ps in PHRASES.values() for p in ps]


def multilingual(rng: random.Random) -> str:
    langs = rng.sample(sorted(PHRASES), rng.randrange(1, 4))
    parts = []
    for _ in range(rng.randrange(2, 25)):
        p = rng.choice(PHRASES[rng.choice(langs)])
        if rng.random() < 0.15:
            p = unicodedata.normalize(rng.choice(["NFD", "NFKC", "NFKD"]), p)
        parts.append(p)
        if rng.random() < 0.15:
            parts.append(_sentence(rng))
    return "".join(rng.choice([" ", "", "\n", "  ", "\u3000", " — "]) + p for p in parts).lstrip(" ")


# -- emoji -------------------------------------------------------------------------------------------------------------

EMOJI = [
    "😀", "😂", "🤖", "🫠", "🦀", "🐍", "🚀", "🎉", "❤", "❤️", "❤︎", "☺︎", "☺️", "✈️", "✔", "⭐", "🌍",
    "👍", "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿", "👋🏽", "🧑🏿‍🚀", "👩‍💻", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🧔‍♂️", "🤷‍♀️",
    "🏳️‍🌈", "🏳️‍⚧️", "🏴‍☠️", "👁‍🗨", "🐕‍🦺", "🇯🇵", "🇺🇸", "🇫🇷", "🇺🇦", "🇪🇺", "🇦", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "1️⃣", "#️⃣", "*️⃣", "0⃣", "🔟", "©️", "™️", "🅰️", "🆗", "\u200d", "\ufe0f", "🫱🏼‍🫲🏾",
]


def emoji_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(5, 60)):
        r = rng.random()
        if r < 0.4:
            parts.append(rng.choice(EMOJI))
        elif r < 0.5:
            parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randrange(2, 6))))
        else:
            parts.append(_word(rng) + rng.choice(["", "!", ",", "."]))
    return "".join(p + rng.choice([" ", "", " ", "\n"]) for p in parts)


# -- combining marks ---------------------------------------------------------------------------------------------------

COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u0483", "\u0591", "\u05b0", "\u064b", "\u0670",
                                                       "\u093c", "\u0e31", "\u1ab0", "\u1dc0", "\u20d0", "\u20e3",
                                                       "\ufe20"]


def combining_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(5, 40)):
        r = rng.random()
        w = _word(rng)
        if r < 0.35:
            parts.append(unicodedata.normalize("NFD", rng.choice(["é", "ñ", "ü", "Å", "ồ", "ự", "ǘ", "ḗ", "Ǻ"]) + w))
        elif r < 0.6:  # Zalgo: stacks of marks on each letter
            parts.append("".join(c + "".join(rng.choice(COMBINING) for _ in range(rng.randrange(0, 8))) for c in w))
        elif r < 0.7:  # marks with nothing to attach to
            parts.append("".join(rng.choice(COMBINING) for _ in range(rng.randrange(1, 5))) + w)
        elif r < 0.8:
            parts.append(unicodedata.normalize("NFD", rng.choice(PHRASES["vi"])))
        else:
            parts.append(w)
    return " ".join(parts)


# -- white space and its look-alikes -------------------------------------------------------------------------------------


def _space_run(rng: random.Random, pool=ALL_SPACES) -> str:
    n = rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 8, 17])
    if rng.random() < 0.5:
        return rng.choice(pool) * n  # one kind repeated
    return "".join(rng.choice(pool) for _ in range(n))


def whitespace_doc(rng: random.Random) -> str:
    pool = rng.choice([ALL_SPACES, WHITE_SPACE, WHITE_SPACE_LOOKALIKES, [" ", "\n"], [" ", "\t", "\n", "\r"],
                       [" ", "\u00a0", "\u3000", "\u2009"]])
    tokens = []
    for _ in range(rng.randrange(3, 40)):
        tokens.append(rng.choice([_word(rng), _word(rng), _number(rng), _contraction(rng), rng.choice(PHRASES_FLAT),
                                  rng.choice(EMOJI), rng.choice(".,!?;:-'\"()"), _mixed_digits(rng)]))
    text = "".join((_space_run(rng, pool) if rng.random() < 0.7 else " ") + t for t in tokens)
    if rng.random() < 0.5:
        text = text.lstrip(" ")
    return text + (_space_run(rng, pool) if rng.random() < 0.6 else "")


def whitespace_edges() -> list[str]:
    """Each white-space-like character alone, in runs before, between and after words, and at both ends."""
    docs = []
    for c in ALL_SPACES:
        docs += [c, c * 3, f"{c}word", f"{c * 2}word", f"a{c}b", f"a{c * 3}b", f"word{c}", f"word{c * 4}",
                 f"{c} {c}x", f" {c}x", f"{c}  x", f"x{c}\n", f"1{c}2", f"!{c}?", f"'{c}s", f"{c}'s", f"x {c}",
                 f"\n{c}\n{c}x"]
    for a in (" ", "\n", "\t", "\u00a0", "\u3000", "\u200b"):
        for b in (" ", "\n", "\r\n", "\u2028"):
            docs += [a + b + "x", a * 3 + b * 2 + "hello", "hello" + a + b, a + "hello" + b * 3, a * 5, (a + b) * 4]
    docs += ["", " ", "  ", "\n", "\n\n", "\r\n", " \n", "\n ", "   hello", "hello   ", "\n\n\nhello\n\n\n",
             "   \n\n   hello   \n\n   ", " " * 100 + "x", "x" + " " * 100, "\n" * 50, "\t" * 20 + "def"]
    return docs


# -- contractions, digits, punctuation, long words ------------------------------------------------------------------------


def contractions_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(10, 60)):
        r = rng.random()
        if r < 0.5:
            parts.append(_contraction(rng))
        elif r < 0.6:
            parts.append(rng.choice(APOSTROPHES) + rng.choice(CONTRACTION_SUFFIXES + ["", "x", "sx", "tis", "em"]))
        elif r < 0.7:
            parts.append(rng.choice(["'''", "''s", "'s's", "'ll've", "''", "'", "’’", "'ss", "'lll", "'dd"]))
        else:
            parts.append(_word(rng))
    return "".join(p + rng.choice([" ", " ", "", "\n", "  ", ", "]) for p in parts)


def digits_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(10, 60)):
        parts.append(rng.choice([_mixed_digits(rng), _number(rng), _date(rng), _word(rng)]))
    return "".join(p + rng.choice([" ", "", ", ", "\n", "-", "/"]) for p in parts)


PUNCT = list(string.punctuation) + ["…", "—", "–", "·", "•", "¡", "¿", "«", "»", "“", "”", "‘", "’", "„", "‹", "›",
                                    "、", "。", "，", "！", "？", "「", "」", "『", "』", "【", "】", "〜", "※", "¶", "§"]


def punct_doc(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(10, 60)):
        r = rng.random()
        if r < 0.5:
            parts.append("".join(rng.choice(PUNCT) for _ in range(rng.randrange(1, 12))))
        elif r < 0.6:
            parts.append(rng.choice(PUNCT) * rng.randrange(2, 80))  # "----", "!!!!!!", "======"
        else:
            parts.append(_word(rng))
    return "".join(p + rng.choice([" ", "", "\n", "  "]) for p in parts)


def long_words_doc(rng: random.Random) -> str:
    r = rng.randrange(9)
    n = rng.choice([50, 200, 1000, 3000])
    if r == 0:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
    elif r == 1:
        w = ("supercalifragilisticexpialidocious" * (n // 30 + 1))[:n]
    elif r == 2:
        w = "".join(rng.choice("0123456789") for _ in range(n))
    elif r == 3:
        w = base64.b64encode(rng.randbytes(n)).decode()
    elif r == 4:
        w = "".join(rng.choice("абвгдеёжзийклмнопрстуфхцчшщъыьэюя") for _ in range(n // 2))
    elif r == 5:
        w = "Pneumonoultramicroscopicsilicovolcanoconiosis" + "".join(rng.choice("aeiou") for _ in range(n))
    elif r == 6:
        w = rng.choice(["ab", "the", "aa", "zq", "ing", "ll"]) * (n // 2)
    elif r == 7:
        w = "".join(rng.choice("的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年") for _ in range(n // 3))
    else:
        w = _url(rng) + "/" + "-".join(_word(rng) for _ in range(n // 8))
    return " ".join([_sentence(rng), w, _sentence(rng)])


# -- the corpus --------------------------------------------------------------------------------------------------------

GENERATORS = [
    (prose, 30), (code, 10), (json_doc, 10), (multilingual, 14), (emoji_doc, 5), (combining_doc, 5),
    (whitespace_doc, 10), (contractions_doc, 5), (digits_doc, 5), (punct_doc, 5), (long_words_doc, 2),
]


@functools.lru_cache(maxsize=4)
def _build(seed: int, n_docs: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    funcs = [g for g, _ in GENERATORS]
    weights = [w for _, w in GENERATORS]
    docs = whitespace_edges() + PHRASES_FLAT + EMOJI
    docs += [rng.choices(funcs, weights)[0](rng) for _ in range(n_docs)]
    assert not any("<|endoftext|>" in d for d in docs)
    return tuple(docs)


def build_corpus(seed: int = 0, n_docs: int = 1000) -> list[str]:
    """Many separate documents, deterministic for a seed (about 0.7 MB of UTF-8 with the default `n_docs`)."""
    return list(_build(seed, n_docs))


def small_corpus(seed: int = 0, max_bytes: int = 6000) -> list[str]:
    """A few KB of documents, one or more of every kind, for the slow pure-Python encoder."""
    rng = random.Random(seed + 1)
    edges = whitespace_edges()
    docs = rng.sample(edges, 120) + rng.sample(PHRASES_FLAT, 12) + rng.sample(EMOJI, 8)
    for gen, _ in GENERATORS:
        for _ in range(2):
            d = gen(rng)
            docs.append(d[:400])
    total = 0
    out = []
    for d in docs:
        n = len(d.encode("utf-8", "surrogatepass"))
        if total + n > max_bytes:
            continue
        total += n
        out.append(d)
    return out


# -- pathological inputs -------------------------------------------------------------------------------------------------


def pathological(n_bytes: int, seed: int = 0) -> dict[str, str]:
    """Worst cases for a BPE encoder, each about `n_bytes` of UTF-8.

    A single letter repeated and random letters are each one pre-token of `n_bytes` (merging is then all that
    matters); random digits are one long `\\p{N}+` piece; base64 alternates letters, digits and `+/` in short pieces;
    random Cyrillic is one piece of two-byte characters.
    """
    rng = random.Random(seed)
    return {
        "repeated_letter": "a" * n_bytes,
        "random_ascii_letters": "".join(rng.choices(string.ascii_letters, k=n_bytes)),
        "random_digits": "".join(rng.choices(string.digits, k=n_bytes)),
        "base64": base64.b64encode(rng.randbytes(n_bytes * 3 // 4)).decode("ascii")[:n_bytes],
        "random_cyrillic": "".join(rng.choices("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
                                               k=n_bytes // 2)),
    }
