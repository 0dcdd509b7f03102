package lakehouse.sql;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerEvent;
import org.apache.spark.sql.connect.service.SparkListenerConnectOperationCanceled;
import org.apache.spark.sql.connect.service.SparkListenerConnectOperationClosed;
import org.apache.spark.sql.connect.service.SparkListenerConnectOperationFailed;
import org.apache.spark.sql.connect.service.SparkListenerConnectOperationFinished;
import org.apache.spark.sql.connect.service.SparkListenerConnectOperationStarted;
import org.apache.spark.sql.hive.thriftserver.ui.SparkListenerThriftServerOperationCanceled;
import org.apache.spark.sql.hive.thriftserver.ui.SparkListenerThriftServerOperationClosed;
import org.apache.spark.sql.hive.thriftserver.ui.SparkListenerThriftServerOperationError;
import org.apache.spark.sql.hive.thriftserver.ui.SparkListenerThriftServerOperationFinish;
import org.apache.spark.sql.hive.thriftserver.ui.SparkListenerThriftServerOperationStart;

/** Journals every statement of the Thrift server and every operation of Spark Connect once it ends: who, what,
 * when it started, how long it took, its outcome and (Spark Connect) the rows it produced. */
public final class AuditListener extends SparkListener {
    private final Map<String, Map<String, Object>> running = new ConcurrentHashMap<>();

    @Override
    public void onOtherEvent(SparkListenerEvent event) {
        if (event instanceof SparkListenerThriftServerOperationStart e) {
            String role = TokenAuthenticator.ROLES.get(e.userName());
            start("jdbc:" + e.id(), "jdbc", e.userName(), role, e.statement(), e.startTime());
        } else if (event instanceof SparkListenerThriftServerOperationFinish e) {
            end("jdbc:" + e.id(), "ok", null, e.finishTime(), null);
        } else if (event instanceof SparkListenerThriftServerOperationError e) {
            end("jdbc:" + e.id(), "error", e.errorMsg(), e.finishTime(), null);
        } else if (event instanceof SparkListenerThriftServerOperationCanceled e) {
            end("jdbc:" + e.id(), "canceled", null, e.finishTime(), null);
        } else if (event instanceof SparkListenerThriftServerOperationClosed e) {
            end("jdbc:" + e.id(), "closed", null, e.closeTime(), null);
        } else if (event instanceof SparkListenerConnectOperationStarted e) {
            start("connect:" + e.operationId(), "connect", e.userId(), null, e.statementText(),
                    e.eventTime());
        } else if (event instanceof SparkListenerConnectOperationFinished e) {
            Object rows = e.producedRowCount().isDefined() ? e.producedRowCount().get() : null;
            end("connect:" + e.operationId(), "ok", null, e.eventTime(), rows);
        } else if (event instanceof SparkListenerConnectOperationFailed e) {
            end("connect:" + e.operationId(), "error", e.errorMessage(), e.eventTime(), null);
        } else if (event instanceof SparkListenerConnectOperationCanceled e) {
            end("connect:" + e.operationId(), "canceled", null, e.eventTime(), null);
        } else if (event instanceof SparkListenerConnectOperationClosed e) {
            end("connect:" + e.operationId(), "closed", null, e.eventTime(), null);
        }
    }

    private void start(String id, String via, String user, String role, String statement, long at) {
        Map<String, Object> entry = new LinkedHashMap<>();
        entry.put("kind", "query");
        entry.put("via", via);
        entry.put("user", user);
        entry.put("role", role);
        entry.put("statement", statement);
        entry.put("started_ms", at);
        running.put(id, entry);
    }

    /** The first ending event of an operation journals it (a finished statement is closed later). */
    private void end(String id, String outcome, String error, long at, Object rows) {
        Map<String, Object> entry = running.remove(id);
        if (entry == null) return;
        entry.put("outcome", outcome);
        entry.put("reason", error);
        entry.put("duration_ms", Math.max(0L, at - (Long) entry.get("started_ms")));
        entry.put("rows", rows);
        Journal.write(entry);
    }
}
