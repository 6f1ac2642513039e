// Integration workload for the JVM: collections, strings, a parallel stream
// (ForkJoin threads), zip through the native zlib, and SHA-256. The JVM
// mallocs for its compiler threads, class data and native libraries. Prints
// results that depend only on the work done.
import java.security.MessageDigest;
import java.util.*;
import java.util.stream.*;
import java.util.zip.*;

public class Workload {
  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (int i = 0; i < 8; i++) s.append(String.format("%02x", b[i]));
    return s.toString();
  }

  public static void main(String[] args) throws Exception {
    Map<String, List<Integer>> m = new HashMap<>();
    for (int i = 0; i < 300000; i++) m.computeIfAbsent("k" + (i % 50000), k -> new ArrayList<>()).add(i);
    long sum = 0;
    for (List<Integer> l : m.values()) sum += l.get(l.size() - 1);
    System.out.println("map " + m.size() + " " + sum);

    TreeMap<String, Integer> t = new TreeMap<>();
    for (int i = 0; i < 100000; i++) t.put(Integer.toString(i * 7919 % 100003, 36), i);
    System.out.println("tree " + t.size() + " " + t.firstKey() + " " + t.lastKey());

    long par = IntStream.range(0, 2000000).parallel().mapToLong(i -> (long) i * i % 1000003).sum();
    System.out.println("parallel " + par);

    StringBuilder sb = new StringBuilder();
    for (int i = 0; i < 100000; i++) sb.append(i).append(',');
    byte[] raw = sb.toString().getBytes("UTF-8");
    Deflater d = new Deflater(9);
    d.setInput(raw);
    d.finish();
    byte[] buf = new byte[raw.length];
    int packed = d.deflate(buf);
    d.end();
    Inflater inf = new Inflater();
    inf.setInput(buf, 0, packed);
    byte[] back = new byte[raw.length];
    int n = inf.inflate(back);
    inf.end();
    System.out.println("zip " + packed + " " + (n == raw.length && Arrays.equals(raw, back)));

    MessageDigest md = MessageDigest.getInstance("SHA-256");
    System.out.println("sha256 " + hex(md.digest(raw)));
  }
}
