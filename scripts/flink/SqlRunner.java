// Runs a Flink SQL script (edgekit-gateway compile --target flink-sql) on the cluster `flink run` names:
//   flink run -m HOST:PORT sqlrunner.jar SCRIPT.sql [--wait]
// SET 'key' = 'value'; statements set the job's configuration, every other statement (CREATE ..., an
// EXECUTE STATEMENT SET BEGIN ... END; block) is executed in order; a statement that starts a job prints
// "JOB <id>"; with --wait the runner waits, after starting them all, for every job to end (bounded inputs). The apache-flink wheel ships no
// SQL gateway, which its sql-client.sh needs; this is the few lines of it a script needs.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.TableResult;

public class SqlRunner {
    public static void main(String[] args) throws Exception {
        String script = Files.readString(Path.of(args[0]));
        List<String> stmts = new ArrayList<>();
        StringBuilder cur = new StringBuilder();
        for (String line : script.split("\n", -1)) {
            if (line.strip().startsWith("--")) continue;
            cur.append(line).append('\n');
            if (line.strip().endsWith(";") && !cur.toString().strip().toUpperCase().startsWith("EXECUTE STATEMENT SET")
                    || line.strip().equalsIgnoreCase("END;")) {
                String s = cur.toString().strip();
                stmts.add(s.substring(0, s.length() - 1));
                cur.setLength(0);
            }
        }
        TableEnvironment t = TableEnvironment.create(EnvironmentSettings.inStreamingMode());
        List<TableResult> jobs = new ArrayList<>();
        for (String s : stmts) {
            if (s.toUpperCase().startsWith("SET ")) {
                String[] kv = s.substring(4).split("=", 2);
                t.getConfig().getConfiguration().setString(unq(kv[0]), unq(kv[1]));
            } else {
                TableResult r = t.executeSql(s);
                if (r.getJobClient().isPresent()) {
                    System.out.println("JOB " + r.getJobClient().get().getJobID());
                    jobs.add(r);
                }
            }
        }
        if (args.length > 1 && args[1].equals("--wait")) {
            for (TableResult r : jobs) r.await();
        }
    }
    static String unq(String s) { s = s.strip(); return s.startsWith("'") ? s.substring(1, s.length() - 1) : s; }
}
