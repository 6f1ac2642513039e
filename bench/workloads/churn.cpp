// Interpreter/compiler-like churn: for each "compilation unit", generate
// source text, tokenize it into strings, parse it into a heap-allocated tree,
// evaluate it against a hash-map symbol table, count identifiers in a
// std::map, then throw everything away. Many small, short-lived objects.
//   churn units=<n> stmts=<statements per unit>
#include "common.h"
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Node {
    char op;  // '+', '-', '*', '^' (xor), 'n' number, 'v' variable
    long value = 0;
    std::string name;
    std::unique_ptr<Node> lhs, rhs;
};

std::string var_name(uint64_t i) {
    std::string s(1, 'v');
    s += std::to_string(i);
    return s;
}

void gen_expr(wl::Rng& r, int depth, std::string& out) {
    if (depth == 0 || r.below(4) == 0) {
        if (r.below(2)) out += std::to_string(r.below(1000));
        else out += var_name(r.below(64));
        return;
    }
    static const char ops[] = "+-*^";
    out += '(';
    gen_expr(r, depth - 1, out);
    out += ' ';
    out += ops[r.below(4)];
    out += ' ';
    gen_expr(r, depth - 1, out);
    out += ')';
}

std::vector<std::string> tokenize(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        char c = s[i];
        if (c == ' ') { ++i; continue; }
        size_t j = i + 1;
        if (std::isalnum(static_cast<unsigned char>(c)))
            while (j < s.size() && std::isalnum(static_cast<unsigned char>(s[j]))) ++j;
        out.emplace_back(s, i, j - i);
        i = j;
    }
    return out;
}

std::unique_ptr<Node> parse(const std::vector<std::string>& t, size_t& i) {
    auto n = std::make_unique<Node>();
    const std::string& tok = t[i++];
    if (tok == "(") {
        n->lhs = parse(t, i);
        n->op = t[i++][0];
        n->rhs = parse(t, i);
        ++i;  // ')'
    } else if (tok[0] == 'v') {
        n->op = 'v';
        n->name = tok;
    } else {
        n->op = 'n';
        n->value = std::stol(tok);
    }
    return n;
}

long eval(const Node& n, std::unordered_map<std::string, long>& vars, std::map<std::string, int>& uses) {
    switch (n.op) {
    case 'n': return n.value;
    case 'v': ++uses[n.name]; return vars[n.name];
    }
    long a = eval(*n.lhs, vars, uses), b = eval(*n.rhs, vars, uses);
    switch (n.op) {
    case '+': return a + b;
    case '-': return a - b;
    case '*': return (a * b) % 1000003;
    default: return a ^ b;
    }
}

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long units = a.get("units", 12000), stmts = a.get("stmts", 40);
    wl::Rng r(3000);
    uint64_t h = 0;
    for (long u = 0; u < units; ++u) {
        std::unordered_map<std::string, long> vars;
        std::map<std::string, int> uses;
        std::vector<std::unique_ptr<Node>> program;
        for (long s = 0; s < stmts; ++s) {
            std::string src;
            gen_expr(r, 1 + int(r.below(6)), src);
            auto toks = tokenize(src);
            size_t i = 0;
            program.push_back(parse(toks, i));
            std::string target = var_name(r.below(64));
            vars[target] = eval(*program.back(), vars, uses);
        }
        for (auto& [name, v] : vars) h += wl::mix(std::hash<std::string>{}(name) ^ uint64_t(v));
        for (auto& [name, c] : uses) h = wl::mix(h ^ uint64_t(c)) + name.size();
    }
    wl::print_checksum(h);
}
