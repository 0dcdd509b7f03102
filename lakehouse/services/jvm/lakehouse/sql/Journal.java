package lakehouse.sql;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.Map;

/** What the endpoint's JVM tells the Python side for ops.audit_log: one JSON object per line, appended to the
 * file named by the system property lakehouse.sql.journal (the driver drains it into the audit log). */
final class Journal {
    static final String FILE = "lakehouse.sql.journal";

    private Journal() {}

    static synchronized void write(Map<String, Object> entry) {
        StringBuilder line = new StringBuilder("{");
        for (Map.Entry<String, Object> field : entry.entrySet()) {
            if (line.length() > 1) line.append(',');
            line.append(quote(field.getKey())).append(':');
            Object value = field.getValue();
            line.append(value == null ? "null" : value instanceof Number ? value.toString() : quote(value.toString()));
        }
        line.append("}\n");
        try (Writer out = new OutputStreamWriter(new FileOutputStream(System.getProperty(FILE), true),
                StandardCharsets.UTF_8)) {
            out.write(line.toString());
        } catch (IOException e) {  // the endpoint's log keeps what the journal could not
            System.err.println("lakehouse.sql: could not journal " + line + ": " + e);
        }
    }

    private static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c)); else out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
