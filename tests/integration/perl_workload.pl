#!/usr/bin/perl
# Integration workload for perl: hashes, regexes, sort, nested structures,
# string growth. Prints only deterministic results.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $seed = 12345;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed; }

# Hashes: insert, update, delete, iterate.
my %h;
for my $i (0 .. 199_999) {
    my $k = sprintf("key%06d_%s", rnd() % 100_000, ("a" .. "z")[$i % 26]);
    $h{$k} += $i;
}
delete $h{$_} for grep { /7_/ } keys %h;
my $sum = 0;
$sum += $_ for values %h;
my @sk = sort keys %h;
print "hash: keys=", scalar(@sk), " sum=$sum first=$sk[0] last=$sk[-1]\n";

# Hash of arrays / arrays of hashes.
my %hoa;
push @{ $hoa{ rnd() % 1000 } }, { id => $_, name => "n$_", tags => [ map { "t$_" } 1 .. ($_ % 5) ] } for 1 .. 100_000;
my $ntags = 0;
for my $k (keys %hoa) { $ntags += scalar(@{ $_->{tags} }) for @{ $hoa{$k} } }
print "hoa: buckets=", scalar(keys %hoa), " tags=$ntags\n";

# Regexes over generated text.
my @words = map { join "", map { chr(97 + rnd() % 10) } 1 .. (3 + rnd() % 9) } 1 .. 60_000;
my $text = join " ", @words;
my $n = () = $text =~ /\b([a-e]+)([f-j]*)\b/g;
(my $sub = $text) =~ s/(a+)(b+)/\U$2\E$1/g;
my %first;
$first{$1}++ while $text =~ /\b(\w{2})/g;
my @split = split /[aeiou]+/, $text;
print "regex: matches=$n sub=", md5_hex($sub), " prefixes=", scalar(keys %first), " split=", scalar(@split), "\n";
(my $tr = $text) =~ tr/a-j/JIHGFEDCBA/;
print "tr: ", md5_hex($tr), "\n";

# Sorting: numeric, string, Schwartzian transform, custom multi-key.
my @nums = map { rnd() % 1_000_000 } 1 .. 200_000;
my @sn = sort { $a <=> $b } @nums;
my @ss = sort @words;
my @st = map { $_->[1] } sort { $a->[0] <=> $b->[0] or $a->[1] cmp $b->[1] } map { [ length($_), $_ ] } @words;
print "sort: $sn[0] $sn[100_000] $sn[-1] ", md5_hex(join ",", @ss), " ", md5_hex(join ",", @st), "\n";

# String growth and substr/join.
my $s = "";
$s .= sprintf("%05d;", $_) for 1 .. 200_000;
substr($s, 1000, 5000) = "x" x 100;
my @parts = split /;/, $s;
print "string: len=", length($s), " parts=", scalar(@parts), " md5=", md5_hex($s), "\n";

# Closures and references freed in a loop.
my $total = 0;
for my $i (1 .. 50_000) {
    my @a = (1 .. ($i % 20));
    my $f = sub { my $x = shift; return $x + scalar(@a) };
    $total += $f->($i);
}
print "closures: $total\n";
