/*
 * Trident: Lucene's IndexSearcher scoring with statistics gathered from every shard of an index.
 *
 * BM25 needs, per query term, its document frequency, and per field the document count and the
 * total term count (average length). A shard's own IndexSearcher takes them from the shard alone,
 * so shards of one corpus score the same document differently from the single-node index. Lucene
 * provides termStatistics/collectionStatistics as the hooks for distributed search; this subclass
 * answers them from the sums over all shards, so every shard scores exactly as the single-node
 * index does (same float inputs to BM25Similarity, hence the same float scores).
 *
 * Protocol (driven from Python, trident_search.indexers.bm25):
 *   byte[] part = GlobalStatsSearcher.export(reader)   on every shard: its own statistics
 *   searcher.setGlobalStats(packed)                    on every shard: all parts, framed as
 *                                                      int n, then n x (int length, bytes)
 *   searcher.clearGlobalStats()                        back to the shard's own statistics
 *
 * Built by build.sh (ecj -17) into ../lib/trident-bm25.jar; the jar's manifest records the SHA-256
 * of this file, and tests check both.
 */
package trident.bm25;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.lucene.index.FieldInfo;
import org.apache.lucene.index.FieldInfos;
import org.apache.lucene.index.IndexReader;
import org.apache.lucene.index.MultiTerms;
import org.apache.lucene.index.Term;
import org.apache.lucene.index.Terms;
import org.apache.lucene.index.TermsEnum;
import org.apache.lucene.search.CollectionStatistics;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.TermStatistics;
import org.apache.lucene.util.BytesRef;

public final class GlobalStatsSearcher extends IndexSearcher {
  private static final int MAGIC = 0x54424d31; // "TBM1"

  /** The statistics in force: null means this shard's own. Swapped whole, never mutated. */
  private volatile Map<String, FieldTable> global;

  public GlobalStatsSearcher(IndexReader reader) {
    super(reader);
  }

  // ---- the hooks ------------------------------------------------------------------------------

  @Override
  public TermStatistics termStatistics(Term term, int docFreq, long totalTermFreq) throws IOException {
    Map<String, FieldTable> g = global;
    if (g != null) {
      FieldTable table = g.get(term.field());
      if (table != null) {
        int i = table.find(term.bytes());
        if (i >= 0) {
          return new TermStatistics(term.bytes(), table.docFreq[i], table.totalTermFreq[i]);
        }
      }
    }
    return super.termStatistics(term, docFreq, totalTermFreq);
  }

  @Override
  public CollectionStatistics collectionStatistics(String field) throws IOException {
    Map<String, FieldTable> g = global;
    if (g != null) {
      FieldTable table = g.get(field);
      if (table != null) {
        return table.collection;
      }
    }
    return super.collectionStatistics(field);
  }

  // ---- export ---------------------------------------------------------------------------------

  /** This reader's statistics for every field with norms (the scored text fields). */
  public static byte[] export(IndexReader reader) throws IOException {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    DataOutputStream out = new DataOutputStream(bytes);
    List<String> fields = scoredFields(reader);
    out.writeInt(MAGIC);
    out.writeInt(fields.size());
    for (String field : fields) {
      Terms terms = MultiTerms.getTerms(reader, field);
      out.writeUTF(field);
      out.writeLong(reader.maxDoc());
      if (terms == null) {
        out.writeLong(0);
        out.writeLong(0);
        out.writeLong(0);
        out.writeLong(0);
        continue;
      }
      out.writeLong(terms.getDocCount());
      out.writeLong(terms.getSumTotalTermFreq());
      out.writeLong(terms.getSumDocFreq());
      ByteArrayOutputStream fieldBytes = new ByteArrayOutputStream();
      DataOutputStream fieldOut = new DataOutputStream(fieldBytes);
      long count = 0;
      TermsEnum it = terms.iterator();
      for (BytesRef t = it.next(); t != null; t = it.next()) {
        fieldOut.writeInt(t.length);
        fieldOut.write(t.bytes, t.offset, t.length);
        fieldOut.writeLong(it.docFreq());
        fieldOut.writeLong(it.totalTermFreq());
        count++;
      }
      fieldOut.flush();
      out.writeLong(count);
      fieldBytes.writeTo(out);
    }
    out.flush();
    return bytes.toByteArray();
  }

  // ---- install --------------------------------------------------------------------------------

  /**
   * Score with the sums of the given parts (every shard's {@link #export}, this one's included).
   * Keeps only the terms this shard holds. Throws IllegalArgumentException when the parts cannot
   * be this index's shards (a term or a count of this shard above the sums): gather them again.
   */
  public void setGlobalStats(byte[] packed) throws IOException {
    IndexReader reader = getIndexReader();
    List<byte[]> parts = unframe(packed);
    Map<String, FieldTable> tables = new HashMap<>();
    for (String field : scoredFields(reader)) {
      Terms terms = MultiTerms.getTerms(reader, field);
      if (terms == null) {
        continue;
      }
      FieldTable table = FieldTable.own(terms);
      long maxDoc = 0, docCount = 0, sumTotalTermFreq = 0, sumDocFreq = 0;
      for (byte[] part : parts) {
        DataInputStream in = new DataInputStream(new ByteArrayInputStream(part));
        long[] counts = seekField(in, field);
        if (counts == null) {
          continue;
        }
        maxDoc += counts[0];
        docCount += counts[1];
        sumTotalTermFreq += counts[2];
        sumDocFreq += counts[3];
        if (counts[1] > 0) {
          table.addPart(in, in.readLong());
        }
      }
      if (docCount < terms.getDocCount() || maxDoc < reader.maxDoc()
          || sumTotalTermFreq < terms.getSumTotalTermFreq()) {
        throw new IllegalArgumentException("the global statistics of field " + field
            + " do not include this shard (" + docCount + " documents in all, "
            + terms.getDocCount() + " here); gather them again");
      }
      table.check(field);
      table.collection = new CollectionStatistics(field, maxDoc, docCount, sumTotalTermFreq, sumDocFreq);
      tables.put(field, table);
    }
    global = tables;
  }

  /** Back to this shard's own statistics. */
  public void clearGlobalStats() {
    global = null;
  }

  public boolean hasGlobalStats() {
    return global != null;
  }

  /** The document count the statistics in force say the whole index holds, for a field. */
  public long globalDocCount(String field) throws IOException {
    CollectionStatistics stats = collectionStatistics(field);
    return stats == null ? 0 : stats.docCount();
  }

  // ---- internals ------------------------------------------------------------------------------

  private static List<String> scoredFields(IndexReader reader) {
    TreeMap<String, Boolean> names = new TreeMap<>();
    for (FieldInfo info : FieldInfos.getMergedFieldInfos(reader)) {
      if (info.hasNorms()) {
        names.put(info.name, Boolean.TRUE);
      }
    }
    return new ArrayList<>(names.keySet());
  }

  private static List<byte[]> unframe(byte[] packed) throws IOException {
    DataInputStream in = new DataInputStream(new ByteArrayInputStream(packed));
    int n = in.readInt();
    if (n < 1 || n > 1 << 20) {
      throw new IllegalArgumentException("global statistics: bad part count " + n);
    }
    List<byte[]> parts = new ArrayList<>(n);
    for (int i = 0; i < n; i++) {
      byte[] part = new byte[in.readInt()];
      in.readFully(part);
      parts.add(part);
    }
    if (in.available() != 0) {
      throw new IllegalArgumentException("global statistics: trailing bytes");
    }
    return parts;
  }

  /** Positions {@code in} at the term count of {@code field}; returns maxDoc, docCount, sums. */
  private static long[] seekField(DataInputStream in, String field) throws IOException {
    if (in.readInt() != MAGIC) {
      throw new IllegalArgumentException("global statistics: not a part written by export()");
    }
    int fields = in.readInt();
    for (int f = 0; f < fields; f++) {
      String name = in.readUTF();
      long[] counts = {in.readLong(), in.readLong(), in.readLong(), in.readLong()};
      if (name.equals(field)) {
        return counts;
      }
      if (counts[1] > 0) {
        long terms = in.readLong();
        for (long t = 0; t < terms; t++) {
          in.skipNBytes(in.readInt() + 16L);
        }
      }
    }
    return null;
  }

  /** One field's own terms (sorted as Lucene sorts them) with their summed statistics. */
  private static final class FieldTable {
    final byte[] bytes;
    final int[] starts; // term i is bytes[starts[i] .. starts[i + 1])
    final long[] docFreq;
    final long[] totalTermFreq;
    final long[] localDocFreq;
    CollectionStatistics collection;

    private FieldTable(byte[] bytes, int[] starts, long[] localDocFreq) {
      this.bytes = bytes;
      this.starts = starts;
      this.localDocFreq = localDocFreq;
      this.docFreq = new long[localDocFreq.length];
      this.totalTermFreq = new long[localDocFreq.length];
    }

    static FieldTable own(Terms terms) throws IOException {
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      int[] starts = new int[1024];
      long[] local = new long[1024];
      int n = 0;
      TermsEnum it = terms.iterator();
      for (BytesRef t = it.next(); t != null; t = it.next()) {
        if (n + 1 >= starts.length) {
          starts = Arrays.copyOf(starts, starts.length * 2);
          local = Arrays.copyOf(local, local.length * 2);
        }
        starts[n] = bytes.size();
        local[n] = it.docFreq();
        bytes.write(t.bytes, t.offset, t.length);
        n++;
      }
      starts[n] = bytes.size();
      return new FieldTable(bytes.toByteArray(), Arrays.copyOf(starts, n + 1), Arrays.copyOf(local, n));
    }

    int size() {
      return docFreq.length;
    }

    int compare(int i, byte[] other, int from, int to) {
      return Arrays.compareUnsigned(bytes, starts[i], starts[i + 1], other, from, to);
    }

    /** Index of {@code term}, or -1. */
    int find(BytesRef term) {
      int lo = 0, hi = size() - 1;
      while (lo <= hi) {
        int mid = (lo + hi) >>> 1;
        int c = compare(mid, term.bytes, term.offset, term.offset + term.length);
        if (c < 0) {
          lo = mid + 1;
        } else if (c > 0) {
          hi = mid - 1;
        } else {
          return mid;
        }
      }
      return -1;
    }

    /** Adds one part's statistics for the terms held here: a merge of two sorted lists. */
    void addPart(DataInputStream in, long terms) throws IOException {
      int i = 0;
      byte[] term = new byte[64];
      for (long t = 0; t < terms; t++) {
        int length = in.readInt();
        if (length > term.length) {
          term = new byte[Math.max(length, term.length * 2)];
        }
        in.readFully(term, 0, length);
        long df = in.readLong();
        long ttf = in.readLong();
        while (i < size() && compare(i, term, 0, length) < 0) {
          i++;
        }
        if (i < size() && compare(i, term, 0, length) == 0) {
          docFreq[i] += df;
          totalTermFreq[i] += ttf;
          i++;
        }
      }
    }

    void check(String field) {
      for (int i = 0; i < size(); i++) {
        if (docFreq[i] < localDocFreq[i]) {
          throw new IllegalArgumentException("the global statistics of field " + field
              + " count a term in fewer documents than this shard holds; gather them again");
        }
      }
    }
  }
}
