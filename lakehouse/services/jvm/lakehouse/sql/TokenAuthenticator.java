package lakehouse.sql;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.security.sasl.AuthenticationException;
import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/** HiveServer2 CUSTOM authentication: the user name is a token holder's name and the password their token
 * (`lakehouse api-token`). The holders file (system property lakehouse.sql.holders, written by the endpoint's
 * driver from the tokens file) has one line per token: SHA-256 of the token, holder, role, and "yes" or the
 * reason the role may not use this endpoint. Every attempt is journalled for ops.audit_log. */
public final class TokenAuthenticator implements PasswdAuthenticationProvider {
    static final String HOLDERS = "lakehouse.sql.holders";
    /** user name -> role of the token it last signed in with: the role of that user's statements. */
    static final Map<String, String> ROLES = new ConcurrentHashMap<>();

    @Override
    public void Authenticate(String user, String password) throws AuthenticationException {
        String role = null;
        String refusal = "unknown token";
        if (password != null && !password.isEmpty()) {
            String hash = sha256(password);
            for (String line : holders()) {
                String[] field = line.split("\t", -1);
                if (field.length == 4 && MessageDigest.isEqual(field[0].getBytes(StandardCharsets.UTF_8),
                        hash.getBytes(StandardCharsets.UTF_8))) {
                    if (!field[1].equals(user)) {
                        refusal = "the token is not " + user + "'s";
                    } else {
                        role = field[2];
                        refusal = field[3].equals("yes") ? null : field[3];
                    }
                    break;
                }
            }
        } else {
            refusal = "no token (send the token as the password)";
        }
        Map<String, Object> entry = new LinkedHashMap<>();
        entry.put("kind", "login");
        entry.put("via", "jdbc");
        entry.put("user", user);
        entry.put("role", role);
        entry.put("outcome", refusal == null ? "ok" : "refused");
        entry.put("reason", refusal);
        Journal.write(entry);
        if (refusal != null) throw new AuthenticationException("lakehouse SQL endpoint: " + refusal);
        ROLES.put(user, role);
    }

    private static Iterable<String> holders() throws AuthenticationException {
        try {
            return Files.readAllLines(Paths.get(System.getProperty(HOLDERS)), StandardCharsets.UTF_8);
        } catch (IOException | RuntimeException e) {
            throw new AuthenticationException("lakehouse SQL endpoint: cannot read its token holders", e);
        }
    }

    private static String sha256(String text) {
        try {
            StringBuilder hex = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8))) {
                hex.append(String.format("%02x", b));
            }
            return hex.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
