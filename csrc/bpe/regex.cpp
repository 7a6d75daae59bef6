// The general pre-tokenizer's regex engine: parser, compiler and backtracking matcher (see
// regex.h for the dialect and the matching rule).
#include "bpe/regex.h"

#include <algorithm>
#include <cstring>
#if defined(__linux__)
#include <pthread.h>
#endif
#include <iterator>

namespace kg {
namespace bpe {

// ---- character sets -----------------------------------------------------------------------

bool CharSet::test_slow(uint32_t cp) const {
  const uint8_t flags = category_flags(cp);
  const uint32_t category_bit = 1u << (flags & kCategoryMask);
  bool in = false;
  for (const Item& item : items) {
    bool hit = (item.categories & category_bit) || (item.space && (flags & kWhiteSpaceFlag));
    if (!hit) {
      for (const auto& r : item.ranges) {
        if (cp >= r.first && cp <= r.second) {
          hit = true;
          break;
        }
      }
    }
    if (hit != item.negated) {
      in = true;
      break;
    }
  }
  return in != negated;
}

void CharSet::finalize() {
  ascii[0] = ascii[1] = 0;
  for (uint32_t cp = 0; cp < 128; ++cp)
    if (test_slow(cp)) ascii[cp >> 6] |= uint64_t(1) << (cp & 63);
}

namespace {

constexpr uint32_t kAllCategories = (1u << (kCn + 1)) - 1;

uint32_t category_bits(const std::string& name) {
  static const char* const kNames[] = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl",
                                       "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc",
                                       "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"};
  for (int c = 0; c <= kCn; ++c)
    if (name == kNames[c]) return 1u << c;
  auto group = [](char major) {
    uint32_t bits = 0;
    for (int c = 0; c <= kCn; ++c)
      if (kNames[c][0] == major) bits |= 1u << c;
    return bits;
  };
  if (name.size() == 1 && std::strchr("LMNPSZC", name[0])) return group(name[0]);
  struct Alias { const char* name; const char* category; };
  static const Alias kAliases[] = {
      {"Letter", "L"}, {"Mark", "M"}, {"Number", "N"}, {"Punctuation", "P"}, {"Symbol", "S"},
      {"Separator", "Z"}, {"Other", "C"}, {"Uppercase_Letter", "Lu"},
      {"Lowercase_Letter", "Ll"}, {"Titlecase_Letter", "Lt"}, {"Modifier_Letter", "Lm"},
      {"Other_Letter", "Lo"}, {"Nonspacing_Mark", "Mn"}, {"Spacing_Mark", "Mc"},
      {"Enclosing_Mark", "Me"}, {"Decimal_Number", "Nd"}, {"Letter_Number", "Nl"},
      {"Other_Number", "No"}, {"Connector_Punctuation", "Pc"}, {"Dash_Punctuation", "Pd"},
      {"Open_Punctuation", "Ps"}, {"Close_Punctuation", "Pe"},
      {"Initial_Punctuation", "Pi"}, {"Final_Punctuation", "Pf"},
      {"Other_Punctuation", "Po"}, {"Math_Symbol", "Sm"}, {"Currency_Symbol", "Sc"},
      {"Modifier_Symbol", "Sk"}, {"Other_Symbol", "So"}, {"Space_Separator", "Zs"},
      {"Line_Separator", "Zl"}, {"Paragraph_Separator", "Zp"}, {"Control", "Cc"},
      {"Format", "Cf"}, {"Surrogate", "Cs"}, {"Private_Use", "Co"}, {"Unassigned", "Cn"},
      {"N&", ""}};
  for (const Alias& a : kAliases)
    if (name == a.name && a.category[0]) return category_bits(a.category);
  if (name == "LC" || name == "L&" || name == "Cased_Letter") return (1u << kLu) | (1u << kLl) | (1u << kLt);
  if (name == "Any") return kAllCategories;
  return 0;
}

// \w (Unicode TR18, as Rust and Python's regex read it): Alphabetic, marks, decimal digits,
// connector punctuation and the join controls. Alphabetic is the letters, the letter numbers
// and Other_Alphabetic, whose code points outside the marks are the circled and squared
// Latin letters (kWordExtra).
constexpr uint32_t kWordCategories = (1u << kLu) | (1u << kLl) | (1u << kLt) | (1u << kLm) |
                                     (1u << kLo) | (1u << kMn) | (1u << kMc) | (1u << kMe) |
                                     (1u << kNd) | (1u << kNl) | (1u << kPc);
const std::pair<uint32_t, uint32_t> kWordExtra[] = {
    {0x200C, 0x200D}, {0x24B6, 0x24E9}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169},
    {0x1F170, 0x1F189}};

bool is_word_char(uint32_t cp) {
  if ((kWordCategories >> (category_flags(cp) & kCategoryMask)) & 1) return true;
  for (const auto& r : kWordExtra)
    if (cp >= r.first && cp <= r.second) return true;
  return false;
}

CharSet::Item word_item(bool negated) {
  CharSet::Item item;
  item.categories = kWordCategories;
  item.ranges.assign(std::begin(kWordExtra), std::end(kWordExtra));
  item.negated = negated;
  return item;
}

// Every code point that matches cp case-insensitively (cp itself included).
std::vector<uint32_t> case_orbit(uint32_t cp) {
  for (uint32_t k = 0; k < kCaseOrbitCount; ++k) {
    const uint32_t* b = kCaseOrbitMembers + kCaseOrbitStart[k];
    const uint32_t* e = kCaseOrbitMembers + kCaseOrbitStart[k + 1];
    if (std::find(b, e, cp) != e) return std::vector<uint32_t>(b, e);
  }
  return {cp};
}

// Adds, to the ranges of `item`, the case variants of every code point they hold.
void close_under_case(CharSet::Item& item) {
  std::vector<std::pair<uint32_t, uint32_t>> added;
  for (uint32_t k = 0; k < kCaseOrbitCount; ++k) {
    const uint32_t* b = kCaseOrbitMembers + kCaseOrbitStart[k];
    const uint32_t* e = kCaseOrbitMembers + kCaseOrbitStart[k + 1];
    bool any = false;
    for (const uint32_t* p = b; p != e && !any; ++p)
      for (const auto& r : item.ranges)
        if (*p >= r.first && *p <= r.second) { any = true; break; }
    if (any)
      for (const uint32_t* p = b; p != e; ++p) added.push_back({*p, *p});
  }
  item.ranges.insert(item.ranges.end(), added.begin(), added.end());
}

}  // namespace

// ---- parser -------------------------------------------------------------------------------

struct RegexParser {
  Regex& re;
  std::vector<uint32_t> cps;  // the pattern as code points
  size_t at = 0;
  int depth = 0;

  struct Frag {
    int first;
    std::vector<int> tails;  // nodes whose `next` is still to be linked
  };

  RegexParser(Regex& r, const std::string& pattern) : re(r) {
    const uint8_t* s = reinterpret_cast<const uint8_t*>(pattern.data());
    size_t n = pattern.size(), i = 0;
    while (i < n) {
      Char c = char_at(s, i, n);
      if (c.cp == 0xFFFFFFFFu) fail("the pattern is not valid UTF-8");
      cps.push_back(c.cp);
      i += c.len;
    }
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw RegexError("cannot read the pattern " + quoted() + ": " + what +
                     " (at character " + std::to_string(at) + ")");
  }
  std::string quoted() const {
    std::string p = re.pattern_;
    if (p.size() > 120) p = p.substr(0, 117) + "...";
    return "'" + p + "'";
  }
  bool done() const { return at >= cps.size(); }
  uint32_t peek(size_t k = 0) const { return at + k < cps.size() ? cps[at + k] : 0xFFFFFFFFu; }
  bool eat(uint32_t c) {
    if (peek() == c) { ++at; return true; }
    return false;
  }

  int add(Regex::Node node) {
    re.nodes_.push_back(std::move(node));
    return static_cast<int>(re.nodes_.size()) - 1;
  }
  int add_set(CharSet set) {
    set.finalize();
    re.sets_.push_back(std::move(set));
    return static_cast<int>(re.sets_.size()) - 1;
  }
  Frag single(Regex::Node node) {
    int id = add(std::move(node));
    return {id, {id}};
  }
  Frag empty() {
    Regex::Node n;
    n.kind = Regex::kEmpty;
    return single(n);
  }
  void link(const std::vector<int>& tails, int to) {
    for (int t : tails) re.nodes_[t].next = to;
  }

  Frag parse_alternation(bool icase) {
    if (++depth > 200) fail("groups nested too deep");
    std::vector<Frag> alts;
    alts.push_back(parse_sequence(icase));
    while (eat('|')) alts.push_back(parse_sequence(icase));
    --depth;
    if (alts.size() == 1) return alts[0];
    Regex::Node node;
    node.kind = Regex::kAlt;
    Frag out{-1, {}};
    for (Frag& a : alts) {
      node.alts.push_back(a.first);
      out.tails.insert(out.tails.end(), a.tails.begin(), a.tails.end());
    }
    out.first = add(node);
    return out;
  }

  // A sequence runs to the next '|' or ')' (or the end). `icase` may be switched on for the
  // rest of the sequence's group by (?i).
  Frag parse_sequence(bool& icase_in) {
    bool icase = icase_in;
    Frag seq = empty();
    while (!done() && peek() != '|' && peek() != ')') {
      if (peek() == '(' && peek(1) == '?' && (peek(2) == 'i' || peek(2) == '-') && peek(3) == ')') {
        icase = peek(2) == 'i';
        at += 4;
        icase_in = icase;  // (?i) also holds in the group's later alternatives
        continue;
      }
      Frag atom = parse_quantified(icase);
      link(seq.tails, atom.first);
      seq.tails = atom.tails;
    }
    return seq;
  }

  Frag parse_quantified(bool icase) {
    bool quantifiable = true;
    Frag atom = parse_atom(icase, &quantifiable);
    for (;;) {
      int min, max;
      size_t save = at;
      if (eat('*')) { min = 0; max = -1; }
      else if (eat('+')) { min = 1; max = -1; }
      else if (eat('?')) { min = 0; max = 1; }
      else if (peek() == '{' && parse_braces(&min, &max)) {}
      else break;
      if (!quantifiable) { at = save; fail("a quantifier must follow something it can repeat"); }
      Regex::RepeatMode mode = Regex::kGreedy;
      if (eat('?')) mode = Regex::kLazy;
      else if (eat('+')) mode = Regex::kPossessive;
      atom = make_repeat(atom, min, max, mode);
    }
    return atom;
  }

  // {n} {n,} {n,m} {,m}; false (and nothing consumed) when the brace is a literal.
  bool parse_braces(int* min, int* max) {
    size_t save = at;
    ++at;  // '{'
    auto number = [&](int* out) {
      size_t start = at;
      long v = 0;
      while (peek() >= '0' && peek() <= '9') {
        v = v * 10 + (peek() - '0');
        if (v > 100000) fail("a repeat count is too large (at most 100000)");
        ++at;
      }
      *out = static_cast<int>(v);
      return at > start;
    };
    int lo = 0, hi = -1;
    bool has_lo = number(&lo);
    if (eat('}')) {
      if (!has_lo) { at = save; return false; }
      *min = *max = lo;
      return true;
    }
    if (!eat(',')) { at = save; return false; }
    bool has_hi = number(&hi);
    if (!eat('}') || (!has_lo && !has_hi)) { at = save; return false; }
    if (!has_hi) hi = -1;
    if (hi >= 0 && hi < lo) fail("a repeat {n,m} has m < n");
    *min = lo;
    *max = hi;
    return true;
  }

  Frag make_repeat(const Frag& body, int min, int max, Regex::RepeatMode mode) {
    Regex::Node node;
    node.kind = Regex::kRepeat;
    node.min = min;
    node.max = max;
    node.mode = mode;
    const Regex::Node& b = re.nodes_[body.first];
    if (b.kind == Regex::kSet && body.tails.size() == 1 && body.tails[0] == body.first) {
      node.set = b.set;  // the single-set fast path; the body node stays unused
      return single(node);
    }
    node.body = body.first;
    link(body.tails, -1);
    if (chain_of(body, &node.chain)) return single(node);  // any mode, in repeat()'s loop
    if (mode != Regex::kPossessive) return single(node);
    // X*+ is (?>X*): a greedy repeat inside an atomic group.
    node.mode = Regex::kGreedy;
    Regex::Node atomic;
    atomic.kind = Regex::kAtomic;
    atomic.body = add(node);
    return single(atomic);
  }

  // Whether `body` (its tails already linked to -1) is a straight chain of sets and
  // one-set lookaheads consuming at least one character; the steps in *out.
  bool chain_of(const Frag& body, std::vector<Regex::Node::ChainStep>* out) {
    std::vector<Regex::Node::ChainStep> steps;
    bool consumes = false;
    auto skip_empty = [&](int id) {
      while (id >= 0 && re.nodes_[id].kind == Regex::kEmpty) id = re.nodes_[id].next;
      return id;
    };
    for (int id = body.first; id >= 0; id = re.nodes_[id].next) {
      const Regex::Node& n = re.nodes_[id];
      if (steps.size() >= 32) return false;
      if (n.kind == Regex::kSet) {
        steps.push_back({n.set, 0});
        consumes = true;
      } else if (n.kind == Regex::kRepeat && n.set >= 0 && n.min == n.max && n.min > 0 &&
                 n.min <= 32) {  // \d{3}
        for (int k = 0; k < n.min; ++k) steps.push_back({n.set, 0});
        consumes = true;
      } else if (n.kind == Regex::kLook && n.ahead) {  // (?=[..]) or (?![..]) of one set
        int b = skip_empty(n.body);
        if (b < 0 || re.nodes_[b].kind != Regex::kSet || skip_empty(re.nodes_[b].next) >= 0)
          return false;
        steps.push_back({re.nodes_[b].set, static_cast<uint8_t>(n.negate ? 2 : 1)});
      } else if (n.kind != Regex::kEmpty) {
        return false;
      }
    }
    if (steps.size() > 32) return false;
    if (!consumes) return false;
    *out = std::move(steps);
    return true;
  }

  Frag parse_atom(bool icase, bool* quantifiable) {
    uint32_t c = peek();
    if (c == '(') return parse_group(icase, quantifiable);
    ++at;
    if (c == '[') return set_frag(parse_class(icase));
    if (c == '.') {
      CharSet s;
      CharSet::Item item;
      item.ranges.push_back({'\n', '\n'});
      s.items.push_back(item);
      s.negated = true;
      return set_frag(std::move(s));
    }
    if (c == '^' || c == '$') {
      *quantifiable = false;
      return assertion(c == '^' ? Regex::kStart : Regex::kEnd);
    }
    if (c == '*' || c == '+' || c == '?') { --at; fail("a quantifier must follow something it can repeat"); }
    if (c == '\\') {
      uint32_t e = peek();
      if (e == 'A') { ++at; *quantifiable = false; return assertion(Regex::kStart); }
      if (e == 'z') { ++at; *quantifiable = false; return assertion(Regex::kEnd); }
      if (e == 'Z') { ++at; *quantifiable = false; return assertion(Regex::kEndZ); }
      if (e == 'b') { ++at; *quantifiable = false; return assertion(Regex::kWordBoundary); }
      if (e == 'B') { ++at; *quantifiable = false; return assertion(Regex::kNotWordBoundary); }
      CharSet s;
      s.items.push_back(parse_escape(icase));
      return set_frag(std::move(s));
    }
    CharSet s;
    s.items.push_back(literal_item(c, icase));
    return set_frag(std::move(s));
  }

  Frag assertion(Regex::AssertKind kind) {
    Regex::Node node;
    node.kind = Regex::kAssert;
    node.assert_kind = kind;
    return single(node);
  }

  Frag set_frag(CharSet set) {
    Regex::Node node;
    node.kind = Regex::kSet;
    node.set = add_set(std::move(set));
    return single(node);
  }

  CharSet::Item literal_item(uint32_t c, bool icase) {
    CharSet::Item item;
    if (icase) {
      for (uint32_t v : case_orbit(c)) item.ranges.push_back({v, v});
    } else {
      item.ranges.push_back({c, c});
    }
    return item;
  }

  Frag parse_group(bool icase, bool* quantifiable) {
    ++at;  // '('
    Regex::Node node;
    bool inner_icase = icase;
    enum { kPlain, kLook, kAtomic } kind = kPlain;
    if (eat('?')) {
      uint32_t c = peek();
      if (c == ':') {
        ++at;
      } else if (c == '=' || c == '!') {
        ++at;
        kind = kLook;
        node.ahead = true;
        node.negate = c == '!';
      } else if (c == '<' && (peek(1) == '=' || peek(1) == '!')) {
        node.negate = peek(1) == '!';
        at += 2;
        kind = kLook;
        node.ahead = false;
      } else if (c == '>') {
        ++at;
        kind = kAtomic;
      } else if (c == '<' || (c == 'P' && peek(1) == '<')) {  // a named group
        at += c == 'P' ? 2 : 1;
        while (!done() && peek() != '>') ++at;
        if (!eat('>')) fail("a group name has no closing '>'");
      } else if (c == 'i' || (c == '-' && peek(1) == 'i')) {  // (?i:...) or (?-i:...)
        inner_icase = c == 'i';
        at += c == 'i' ? 1 : 2;
        if (!eat(':')) fail("only the flag i is supported, as (?i:...), (?-i:...) or (?i)");
      } else {
        fail("unsupported group (?" + std::string(1, static_cast<char>(c < 128 ? c : '?')) +
             "...): backreferences, conditionals and flags other than i are not supported");
      }
    }
    Frag body = parse_alternation(inner_icase);
    if (!eat(')')) fail("a group has no closing ')'");
    if (kind == kPlain) return body;
    link(body.tails, -1);
    node.body = body.first;
    if (kind == kAtomic) {
      node.kind = Regex::kAtomic;
      return single(node);
    }
    node.kind = Regex::kLook;
    *quantifiable = false;
    if (!node.ahead) {
      int len = fixed_length(body.first);
      if (len < 0) fail("a lookbehind must have a fixed length");
      node.behind = len;
    }
    return single(node);
  }

  // Length in characters of every match of the sub-expression from `id` up to `stop` (-1: its
  // end), or -1 when matches can differ in length.
  int fixed_length(int id, int stop = -1) {
    int total = 0;
    for (; id >= 0 && id != stop; id = re.nodes_[id].next) {
      const Regex::Node& n = re.nodes_[id];
      int l = 0;
      switch (n.kind) {
        case Regex::kSet: l = 1; break;
        case Regex::kEmpty: case Regex::kAssert: case Regex::kLook: break;
        case Regex::kAtomic: l = fixed_length(n.body); break;
        case Regex::kRepeat:
          if (n.min != n.max) return -1;
          l = n.set >= 0 ? 1 : fixed_length(n.body);
          if (l >= 0) l *= n.min;
          break;
        case Regex::kAlt: {
          // Alternatives link to the node after the alternation: measure each to there.
          l = -2;
          for (int a : n.alts) {
            int la = fixed_length(a, n.next);
            if (la < 0 || (l != -2 && la != l)) return -1;
            l = la;
          }
          break;
        }
      }
      if (l < 0) return -1;
      total += l;
    }
    return total;
  }

  uint32_t parse_hex(size_t digits_min, size_t digits_max) {
    uint32_t v = 0;
    size_t k = 0;
    while (k < digits_max) {
      uint32_t c = peek();
      int d = c >= '0' && c <= '9' ? int(c - '0') : c >= 'a' && c <= 'f' ? int(c - 'a' + 10)
              : c >= 'A' && c <= 'F' ? int(c - 'A' + 10) : -1;
      if (d < 0) break;
      v = v * 16 + static_cast<uint32_t>(d);
      ++at;
      ++k;
    }
    if (k < digits_min) fail("a hexadecimal escape needs hex digits");
    if (v >= 0x110000) fail("a code point escape is beyond U+10FFFF");
    return v;
  }

  // After a backslash: \s \S \d \D \w \W \p{..} \P{..}, or an escaped character (the same
  // inside [...] as outside).
  CharSet::Item parse_escape(bool icase) {
    if (done()) fail("the pattern ends with a backslash");
    uint32_t e = cps[at++];
    CharSet::Item item;
    switch (e) {
      case 's': item.space = true; return item;
      case 'S': item.space = true; item.negated = true; return item;
      case 'd': item.categories = 1u << kNd; return item;
      case 'D': item.categories = 1u << kNd; item.negated = true; return item;
      case 'w': return word_item(false);
      case 'W': return word_item(true);
      case 'p': case 'P': {
        std::string name;
        if (eat('{')) {
          bool neg = eat('^');
          while (!done() && peek() != '}') {
            uint32_t c = cps[at++];
            if (c >= 128) fail("a property name must be ASCII");
            if (c != ' ') name += static_cast<char>(c);
          }
          if (!eat('}')) fail("\\p{ has no closing '}'");
          if (neg) e = e == 'p' ? 'P' : 'p';
        } else {
          if (done() || peek() >= 128) fail("\\p needs a property name");
          name = std::string(1, static_cast<char>(cps[at++]));
        }
        if (name == "White_Space" || name == "Whitespace" || name == "space") {
          item.space = true;
        } else {
          item.categories = category_bits(name);
          if (!item.categories)
            fail("unsupported property \\p{" + name + "}: general categories (L, Lu, M, N, P, "
                 "S, Z, C and their subcategories) and White_Space are supported, not scripts");
        }
        item.negated = e == 'P';
        return item;
      }
      case 'n': return literal_item('\n', false);
      case 'r': return literal_item('\r', false);
      case 't': return literal_item('\t', false);
      case 'f': return literal_item('\f', false);
      case 'v': return literal_item('\v', false);
      case 'a': return literal_item('\a', false);
      case 'e': return literal_item(0x1B, false);
      case '0': return literal_item(0, false);
      case 'x':
        if (eat('{')) {
          uint32_t v = parse_hex(1, 6);
          if (!eat('}')) fail("\\x{ has no closing '}'");
          return literal_item(v, icase);
        }
        return literal_item(parse_hex(2, 2), icase);
      case 'u': return literal_item(parse_hex(4, 4), icase);
      case 'U': return literal_item(parse_hex(8, 8), icase);
      default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
          fail(std::string("unsupported escape \\") + static_cast<char>(e) +
               " (backreferences and other escapes are not supported)");
        return literal_item(e, icase);
    }
  }

  // After '[': the class up to its ']'.
  CharSet parse_class(bool icase) {
    CharSet set;
    if (eat('^')) set.negated = true;
    CharSet::Item ranges;  // the literal characters and ranges, one item
    bool first = true;
    for (;;) {
      if (done()) fail("a class [ has no closing ']'");
      uint32_t c = peek();
      if (c == ']' && !first) { ++at; break; }
      first = false;
      if (c == '[' && peek(1) == ':') fail("POSIX classes [:name:] are not supported");
      uint32_t lo;
      if (c == '\\') {
        ++at;
        uint32_t e = peek();
        if (e == 's' || e == 'S' || e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 'p' ||
            e == 'P') {
          set.items.push_back(parse_escape(icase));
          continue;
        }
        CharSet::Item lit = parse_escape(false);
        lo = lit.ranges[0].first;
      } else {
        ++at;
        lo = c;
      }
      // A range lo-hi (a '-' before ']' is a literal '-').
      if (peek() == '-' && peek(1) != ']' && peek(1) != 0xFFFFFFFFu) {
        ++at;
        uint32_t hi;
        if (peek() == '\\') {
          ++at;
          uint32_t e = peek();
          if (e == 's' || e == 'S' || e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 'p' ||
              e == 'P')
            fail("a class range cannot end in a class escape");
          hi = parse_escape(false).ranges[0].first;
        } else {
          hi = cps[at++];
        }
        if (hi < lo) fail("a class range runs backwards");
        ranges.ranges.push_back({lo, hi});
      } else {
        ranges.ranges.push_back({lo, lo});
      }
    }
    if (!ranges.ranges.empty()) {
      if (icase) close_under_case(ranges);
      set.items.push_back(std::move(ranges));
    }
    return set;
  }
};

// ---- the first-character filter -----------------------------------------------------------

namespace {

// Adds to `out` the characters a match of the sub-expression at `id` can start with; false if
// it can start without consuming a character first (an assertion, a lookaround, an empty
// path), which turns the filter off.
bool first_chars(const Regex& re, const std::vector<Regex::Node>& nodes,
                 const std::vector<CharSet>& sets, int id, std::vector<int>& out, int depth) {
  if (depth > 100) return false;
  if (id < 0) return false;  // the end: an empty match
  const Regex::Node& n = nodes[id];
  switch (n.kind) {
    case Regex::kSet: out.push_back(n.set); return true;
    case Regex::kEmpty: return first_chars(re, nodes, sets, n.next, out, depth + 1);
    case Regex::kAlt:
      for (int a : n.alts)
        if (!first_chars(re, nodes, sets, a, out, depth + 1)) return false;
      return true;
    case Regex::kRepeat:
      if (n.min == 0) {
        if (n.set >= 0) out.push_back(n.set);
        else if (!first_chars(re, nodes, sets, n.body, out, depth + 1)) return false;
        return first_chars(re, nodes, sets, n.next, out, depth + 1);
      }
      if (n.set >= 0) { out.push_back(n.set); return true; }
      return first_chars(re, nodes, sets, n.body, out, depth + 1);
    case Regex::kAtomic:
      // An atomic body that can match empty continues after it; be conservative.
      return false;
    case Regex::kLook:
    case Regex::kAssert:
      return false;
  }
  return false;
}

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  RegexParser p(*this, pattern);
  RegexParser::Frag f = p.parse_alternation(false);
  if (!p.done()) {
    if (p.peek() == ')') p.fail("unbalanced ')'");
    p.fail("unexpected character");
  }
  p.link(f.tails, -1);
  start_ = f.first;
  std::vector<int> firsts;
  if (first_chars(*this, nodes_, sets_, start_, firsts, 0)) {
    std::sort(firsts.begin(), firsts.end());
    firsts.erase(std::unique(firsts.begin(), firsts.end()), firsts.end());
    // The union of the sets (a bitmap for ASCII, the sets themselves beyond it).
    has_first_ = true;
    first_sets_ = firsts;
    for (uint32_t cp = 0; cp < 128; ++cp)
      for (int s : firsts)
        if (sets_[s].test(cp)) { first_ascii_[cp >> 6] |= uint64_t(1) << (cp & 63); break; }
  }
}

// ---- matcher ------------------------------------------------------------------------------

namespace {

// Native stack frames of nested repeats / alternations (about 3 per iteration of a repeated
// group, not a single-set repeat). A text that needs more, or more than three quarters of the
// stack this thread has left (sanitizer builds have much larger frames), raises RegexError
// (ValueError in Python) instead of overflowing the stack.
constexpr int kMaxDepth = 20000;

// The lowest address of this thread's stack (0 when unknown).
uintptr_t stack_low() {
  thread_local uintptr_t low = ~uintptr_t(0);
  if (low == ~uintptr_t(0)) {
    low = 0;
#if defined(__linux__)
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* addr = nullptr;
      size_t size = 0;
      if (pthread_attr_getstack(&attr, &addr, &size) == 0) low = reinterpret_cast<uintptr_t>(addr);
      pthread_attr_destroy(&attr);
    }
#endif
  }
  return low;
}

// Backtracking steps a split may take: pathological patterns (nested quantifiers) can need
// exponentially many; a split that runs out raises RegexError rather than hanging.
struct StepBudget {
  uint64_t left = 0;
  uint64_t serial = 0;  // splits opened on this thread (tags memo entries)
};
thread_local StepBudget g_budget;

// The repeat memo: a few slots per thread, tagged with the split and the repeat node, so that
// opening a split (once per piece of each stage of a pipeline) allocates nothing.
struct MemoSlot {
  uint64_t scope = 0;
  int rid = -1;
  RepeatMemo memo;
};
constexpr int kMemoSlots = 16;
thread_local MemoSlot g_memo[kMemoSlots];

RepeatMemo* memo_for(MemoSlot* memo, uint64_t scope, int rid) {
  MemoSlot& slot = memo[rid & (kMemoSlots - 1)];
  if (slot.scope != scope || slot.rid != rid) {
    slot.scope = scope;
    slot.rid = rid;
    slot.memo = RepeatMemo();
  }
  return &slot.memo;
}

uint64_t budget_for(size_t n) { return 200 * uint64_t(n + 1) + 10'000'000; }

}  // namespace

RegexContext regex_context(size_t bytes) {
  thread_local std::vector<size_t> stack;
  RegexContext ctx;
  ctx.stack = &stack;
  ctx.budget = &g_budget;
  ctx.memo = g_memo;
  g_budget.left = budget_for(bytes);
  // Use at most three quarters of the stack left below this frame (64 MB at most).
  uintptr_t here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  uintptr_t low = stack_low();
  ctx.floor = 0;
  if (low != 0 && here > low) {
    uintptr_t room = here - low;
    ctx.floor = low + room / 4;
    if (room > (uintptr_t(64) << 20)) ctx.floor = here - (uintptr_t(64) << 20);
  }
  return ctx;
}

struct RegexMatcher {
  const Regex& re;
  const uint8_t* s;
  size_t n;
  std::vector<size_t>& stack;  // positions of single-set repeat runs (backing off)
  uintptr_t floor;             // run() refuses to go below this stack address
  StepBudget* budget;          // this thread's g_budget
  MemoSlot* memo;              // this thread's g_memo
  uint64_t scope;              // this split's tag in the memo
  int depth = 0;

  enum ContKind : uint8_t { kStop, kStopAt, kRepeatIter };
  struct Cont {
    ContKind kind;
    int node;
    int count;
    size_t start;  // kRepeatIter: where the iteration began; kStopAt: the required end
    const Cont* up;
    mutable size_t end;  // kStop / kStopAt: where the sub-expression ended
  };

  size_t end_ = 0;

  KG_BPE_INLINE Char decode(size_t pos) const { return char_at(s, pos, n); }

  // The start of the character before pos (pos > 0).
  size_t prev_start(size_t pos) const {
    size_t p = pos - 1;
    size_t lim = pos >= 4 ? pos - 4 : 0;
    while (p > lim && (s[p] & 0xC0) == 0x80) --p;
    // Only a sequence that decodes to exactly [p, pos) is one character; otherwise the last
    // byte is an invalid byte of its own.
    Char c = char_at(s, p, n);
    return p + c.len == pos ? p : pos - 1;
  }

  bool check(Regex::AssertKind kind, size_t pos) const {
    switch (kind) {
      case Regex::kStart: return pos == 0;
      case Regex::kEnd: return pos == n;
      case Regex::kEndZ: return pos == n || (pos + 1 == n && s[pos] == '\n');
      case Regex::kLineStart: return pos == 0 || s[pos - 1] == '\n';
      case Regex::kLineEnd: return pos == n || s[pos] == '\n';
      case Regex::kWordBoundary:
      case Regex::kNotWordBoundary: {
        bool before = pos > 0 && is_word_char(char_at(s, prev_start(pos), n).cp);
        bool after = pos < n && is_word_char(decode(pos).cp);
        return (before != after) == (kind == Regex::kWordBoundary);
      }
    }
    return false;
  }

  bool resume(size_t pos, const Cont* k) {
    switch (k->kind) {
      case kStop: k->end = pos; return true;
      case kStopAt:
        if (pos != k->start) return false;
        k->end = pos;
        return true;
      case kRepeatIter: {
        const Regex::Node& r = re.nodes_[k->node];
        if (pos == k->start && k->count + 1 > r.min) return false;  // an empty iteration
        return iterate(k->node, k->count + 1, pos, k->up);
      }
    }
    return false;
  }

  // Sub-match of the body at `id` from pos; its end in *end. Atomic: no backtracking into it.
  bool sub(int id, size_t pos, size_t* end, size_t must_end = SIZE_MAX) {
    Cont stop{must_end == SIZE_MAX ? kStop : kStopAt, -1, 0, must_end, nullptr, 0};
    if (!run(id, pos, &stop)) return false;
    *end = stop.end;
    return true;
  }

  bool iterate(int rid, int count, size_t pos, const Cont* k) {
    const Regex::Node& r = re.nodes_[rid];
    Cont c{kRepeatIter, rid, count, pos, k, 0};
    if (count < r.min) return run(r.body, pos, &c);
    bool more = r.max < 0 || count < r.max;
    if (r.mode == Regex::kLazy) {
      if (run(r.next, pos, k)) return true;
      return more && run(r.body, pos, &c);
    }
    if (more && run(r.body, pos, &c)) return true;
    return run(r.next, pos, k);
  }

  // One iteration of a chain repeat from p: its end in *out, or false.
  void spend() const {
    if (--budget->left == 0)
      throw RegexError("pre-tokenizer pattern " + re.pattern() +
                       ": the text needs more backtracking than the engine allows (over "
                       "200 steps per byte: nested quantifiers?)");
  }

  bool chain_step(const Regex::Node& r, size_t p, size_t* out) const {
    spend();
    for (const Regex::Node::ChainStep& st : r.chain) {
      if (st.peek == 0) {
        if (p >= n) return false;
        Char c = decode(p);
        if (!re.sets_[st.set].test(c.cp)) return false;
        p += c.len;
      } else {
        bool in = p < n && re.sets_[st.set].test(decode(p).cp);
        if (in != (st.peek == 1)) return false;
      }
    }
    *out = p;
    return true;
  }

  bool chain_repeat(int rid, size_t pos, const Cont* k) {
    const Regex::Node& r = re.nodes_[rid];
    const size_t max = r.max < 0 ? SIZE_MAX : static_cast<size_t>(r.max);
    const size_t min = static_cast<size_t>(r.min);
    size_t count = 0, p = pos, q;
    if (r.mode == Regex::kLazy) {
      for (;;) {
        if (count >= min && run(r.next, p, k)) return true;
        if (count >= max || !chain_step(r, p, &q)) return false;
        p = q;
        ++count;
      }
    }
    const size_t base = stack.size();
    while (count < max && chain_step(r, p, &q)) {
      p = q;
      ++count;
      stack.push_back(p);
    }
    bool ok = false;
    if (count >= min) {
      if (r.mode == Regex::kPossessive) {
        ok = run(r.next, p, k);
      } else {
        for (size_t c = count;; --c) {
          size_t at = c == 0 ? pos : stack[base + c - 1];
          if (run(r.next, at, k)) { ok = true; break; }
          if (c == min) break;
        }
      }
    }
    stack.resize(base);
    return ok;
  }

  bool repeat(int rid, size_t pos, const Cont* k) {
    const Regex::Node& r = re.nodes_[rid];
    if (!r.chain.empty()) return chain_repeat(rid, pos, k);
    if (r.set < 0) return iterate(rid, 0, pos, k);
    const CharSet& set = re.sets_[r.set];
    const size_t max = r.max < 0 ? SIZE_MAX : static_cast<size_t>(r.max);
    const size_t min = static_cast<size_t>(r.min);
    if (r.mode == Regex::kPossessive) {
      size_t count = 0, p = pos;
      while (count < max && p < n) {
        Char c = decode(p);
        if (!set.test(c.cp)) break;
        p += c.len;
        ++count;
      }
      if (count < min) return false;
      return run(r.next, p, k);
    }
    if (r.mode == Regex::kLazy) {
      size_t count = 0, p = pos;
      for (;;) {
        if (count >= min && run(r.next, p, k)) return true;
        if (count >= max || p >= n) return false;
        Char c = decode(p);
        if (!set.test(c.cp)) return false;
        p += c.len;
        ++count;
      }
    }
    // Greedy: the longest run, then back off one character at a time. At the top level (no
    // continuation) with an unbounded run and min <= 1, the memo can answer at once.
    RepeatMemo* m = (!k && r.max < 0 && min <= 1) ? memo_for(memo, scope, rid) : nullptr;
    if (m && pos >= m->start_lo && pos < m->run_end) {
      size_t lowest = min == 0 ? pos : pos + decode(pos).len;
      if (lowest >= m->fail_lo) return false;
    }
    const size_t base = stack.size();
    size_t count = 0, p = pos;
    while (count < max && p < n) {
      Char c = decode(p);
      if (!set.test(c.cp)) break;
      p += c.len;
      ++count;
      stack.push_back(p);
    }
    budget->left -= std::min<uint64_t>(count / 4, budget->left - 1);  // the scan's share
    if (budget->left <= 1) spend();
    bool ok = false;
    if (count >= min) {
      for (size_t c = count;; --c) {
        size_t at = c == 0 ? pos : stack[base + c - 1];
        if (run(r.next, at, k)) { ok = true; break; }
        if (c == min) break;
      }
      if (!ok && m) {  // every end in [lowest, p] failed
        m->start_lo = pos;
        m->run_end = p;
        m->fail_lo = min == 0 ? pos : stack[base];
      }
    }
    stack.resize(base);
    return ok;
  }

  bool run(int id, size_t pos, const Cont* k) {
    if (++depth > kMaxDepth ||
        reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) < floor) {
      --depth;
      throw RegexError("pre-tokenizer pattern " + re.pattern() +
                               ": the text needs deeper backtracking than the engine allows "
                               "(a repeated group over a very long run)");
    }
    struct Guard { int& d; ~Guard() { --d; } } guard{depth};
    for (;;) {
      if (--budget->left == 0)
        throw RegexError("pre-tokenizer pattern " + re.pattern() +
                         ": the text needs more backtracking than the engine allows (over "
                         "200 steps per byte: nested quantifiers?)");
      if (id < 0) {
        if (!k) { end_ = pos; return true; }
        return resume(pos, k);
      }
      const Regex::Node& nd = re.nodes_[id];
      switch (nd.kind) {
        case Regex::kSet: {
          if (pos >= n) return false;
          Char c = decode(pos);
          if (!re.sets_[nd.set].test(c.cp)) return false;
          pos += c.len;
          id = nd.next;
          continue;
        }
        case Regex::kEmpty:
          id = nd.next;
          continue;
        case Regex::kAlt: {
          for (size_t a = 0; a + 1 < nd.alts.size(); ++a)
            if (run(nd.alts[a], pos, k)) return true;
          id = nd.alts.back();
          continue;
        }
        case Regex::kAssert:
          if (!check(nd.assert_kind, pos)) return false;
          id = nd.next;
          continue;
        case Regex::kAtomic: {
          size_t e;
          if (!sub(nd.body, pos, &e)) return false;
          pos = e;
          id = nd.next;
          continue;
        }
        case Regex::kLook: {
          bool found;
          size_t e;
          if (nd.ahead) {
            found = sub(nd.body, pos, &e);
          } else {
            size_t b = pos;
            int steps = 0;
            while (steps < nd.behind && b > 0) { b = prev_start(b); ++steps; }
            found = steps == nd.behind && sub(nd.body, b, &e, pos);
          }
          if (found == nd.negate) return false;
          id = nd.next;
          continue;
        }
        case Regex::kRepeat:
          return repeat(id, pos, k);
      }
    }
  }
};

RegexSearch::RegexSearch(const Regex& re, const RegexContext& ctx, const uint8_t* s, size_t n)
    : re_(re), ctx_(ctx), s_(s), n_(n),
      scope_(++static_cast<StepBudget*>(ctx.budget)->serial) {}

bool RegexSearch::match_at(size_t i, size_t* end) {
  ctx_.stack->clear();
  RegexMatcher m{re_, s_, n_, *ctx_.stack, ctx_.floor, static_cast<StepBudget*>(ctx_.budget),
                 static_cast<MemoSlot*>(ctx_.memo), scope_};
  if (!m.run(re_.start_, i, nullptr)) return false;
  *end = m.end_;
  return true;
}

bool Regex::match_at(const uint8_t* s, size_t n, size_t i, size_t* end) const {
  RegexContext ctx = regex_context(n - i);
  RegexSearch search(*this, ctx, s, n);
  return search.match_at(i, end);
}

RegexPipeline::RegexPipeline(const std::vector<std::string>& patterns) {
  if (patterns.empty()) throw RegexError("a pre-tokenizer needs at least one pattern");
  stages_.reserve(patterns.size());
  for (const std::string& p : patterns) stages_.emplace_back(p);
}

std::vector<std::string> RegexPipeline::patterns() const {
  std::vector<std::string> out;
  for (const Regex& r : stages_) out.push_back(r.pattern());
  return out;
}

}  // namespace bpe
}  // namespace kg
