<?php
// Integration workload for PHP under the shim: deterministic output only.
// PHP's own allocator serves most requests; large strings and arrays and the
// extensions' allocations reach malloc.
$a = [];
for ($i = 0; $i < 400000; $i++) {
    $a[$i % 70001] = str_repeat(chr(97 + $i % 26), $i % 61) . $i;
    if ($i % 5 == 0) unset($a[($i * 7) % 70001]);
}
echo "array: ", count($a), " ", md5(serialize($a)), "\n";
$words = [];
for ($i = 0; $i < 200000; $i++) $words[] = substr(md5((string)$i), 0, 6 + $i % 9);
sort($words);
echo "sort: ", $words[0], " ", $words[count($words) - 1], " ", md5(implode(",", $words)), "\n";
$text = implode(" ", $words);
echo "regex: ", preg_match_all('/\b[a-f]{4,}\b/', $text), " ", strlen(preg_replace('/[0-9]+/', '#', $text)), "\n";
$big = str_repeat("mapalloc ", 3000000);
echo "big: ", strlen($big), " ", substr_count($big, "alloc"), " ", md5(strrev($big)), "\n";
$u = unserialize(serialize(array_slice($a, 0, 5000, true)));
echo "roundtrip: ", count($u), " ", md5(json_encode($u)), "\n";
echo "modules: ", count(get_loaded_extensions()) > 10 ? "many" : "few", "\n";
