using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>A real redis-server process on a free loopback port, for one test or for the whole run.</summary>
public sealed class RedisServer : IAsyncDisposable
{
    private readonly string _dataDirectory;
    private readonly string[] _extraArgs;
    private Process? _process;

    private RedisServer(int port, string dataDirectory, string[] extraArgs)
    {
        Port = port;
        _dataDirectory = dataDirectory;
        _extraArgs = extraArgs;
    }

    public int Port { get; }

    public string ConnectionString => $"127.0.0.1:{Port},abortConnect=false,connectTimeout=2000,syncTimeout=3000,asyncTimeout=3000";

    /// <summary>
    /// Stops a script that keeps Redis busy, with <c>SCRIPT KILL</c> over a plain socket: a client's connection can be dropped
    /// while Redis answers BUSY (a command of its own, such as a PING, refused), and cannot send it then.
    /// </summary>
    public async Task KillScriptAsync()
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Port);
        await using var stream = tcp.GetStream();
        await stream.WriteAsync("*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n"u8.ToArray());
        using var reader = new StreamReader(stream, Encoding.ASCII);
        var reply = await reader.ReadLineAsync();
        if (reply != "+OK")
        {
            throw new InvalidOperationException($"SCRIPT KILL answered {reply}");
        }
    }

    /// <param name="appendFsync">When set, AOF is on with this fsync policy.</param>
    public static async Task<RedisServer> StartAsync(string? appendFsync = null, params string[] extraArgs)
    {
        var args = new List<string> { "--save", "" };
        if (appendFsync is not null)
        {
            args.AddRange(["--appendonly", "yes", "--appendfsync", appendFsync]);
        }
        args.AddRange(extraArgs);
        for (var attempt = 1; ; attempt++)
        {
            var directory = Path.Combine(Path.GetTempPath(), "portazure-tests", "redis-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(directory);
            var server = new RedisServer(FreePortOutsideEphemeralRange(), directory, [.. args]);
            try
            {
                await server.StartProcessAsync();
                return server;
            }
            catch (InvalidOperationException) when (attempt < 3)
            {
                // The free port was taken before redis-server bound it: another port.
                await server.DisposeAsync();
            }
        }
    }

    public async Task StartProcessAsync()
    {
        var start = new ProcessStartInfo("redis-server")
        {
            WorkingDirectory = _dataDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "--port", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--dir", _dataDirectory }.Concat(_extraArgs))
        {
            start.ArgumentList.Add(arg);
        }
        _process = Process.Start(start) ?? throw new InvalidOperationException("redis-server did not start");
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited)
            {
                // Most likely another process took the port between FreePort() and the bind.
                throw new InvalidOperationException($"redis-server on port {Port} exited at start (code {_process.ExitCode})");
            }
            try
            {
                await using var connection = await ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{Port},connectTimeout=500");
                if (_extraArgs.Contains("--cluster-enabled"))
                {
                    // A cluster node serves no key until slots are assigned: asked itself.
                    await connection.GetServer("127.0.0.1", Port).PingAsync();
                    return;
                }
                var db = connection.GetDatabase();
                // Loading an AOF answers LOADING until done.
                await db.PingAsync();
                await db.StringGetAsync("__ready");
                return;
            }
            catch (Exception ex) when (ex is RedisException or TimeoutException)
            {
                await Task.Delay(50);
            }
        }
        throw new InvalidOperationException($"redis-server on port {Port} did not answer within 20 s (is redis-server installed?)");
    }

    /// <summary>A replica of <paramref name="primary"/>, returned once its link to it is up (the first sync done).</summary>
    public static async Task<RedisServer> StartReplicaOfAsync(RedisServer primary)
    {
        ArgumentNullException.ThrowIfNull(primary);
        var replica = await StartAsync(null, "--replicaof", "127.0.0.1", primary.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await using var connection = await ConnectionMultiplexer.ConnectAsync(replica.ConnectionString);
        await Eventually.HoldsAsync(() => IsLinkedAsync(connection, replica.Port), TimeSpan.FromSeconds(20), "the replica is in sync");
        return replica;
    }

    /// <summary>Whether the replica on <paramref name="port"/> has its link to its primary up.</summary>
    public static async Task<bool> IsLinkedAsync(IConnectionMultiplexer connection, int port) =>
        await InfoFieldAsync(connection, port, "replication", "master_link_status") == "up";

    /// <summary>
    /// One field of the <c>INFO</c> <paramref name="section"/> of the server on <paramref name="port"/>, asked itself
    /// through <paramref name="connection"/>; null when the section has no such field.
    /// </summary>
    public static async Task<string?> InfoFieldAsync(IConnectionMultiplexer connection, int port, string section, string field)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var info = (string?)await connection.GetServer("127.0.0.1", port).ExecuteAsync("INFO", section) ?? "";
        return info.Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(l => l.StartsWith(field + ":", StringComparison.Ordinal))?[(field.Length + 1)..];
    }

    /// <summary>
    /// Writes 4 MB through <paramref name="db"/>, then lowers <c>maxmemory</c> to 1 MB: Redis is over its limit from then on
    /// and, with <c>noeviction</c>, refuses writes until the limit is raised (<c>CONFIG SET maxmemory 0</c>).
    /// </summary>
    public static async Task FillAsync(IDatabase db)
    {
        ArgumentNullException.ThrowIfNull(db);
        await db.StringSetAsync("filler", new string('x', 4 * 1024 * 1024));
        await db.ExecuteAsync("CONFIG", "SET", "maxmemory", "1mb");
    }

    /// <summary>SIGSTOP: the server keeps its connections but answers nothing until <see cref="Resume"/>.</summary>
    public void Pause() => Signal("-STOP");

    /// <summary>SIGCONT: the server goes on with what it was sent meanwhile.</summary>
    public void Resume() => Signal("-CONT");

    private void Signal(string signal)
    {
        var pid = _process?.Id ?? throw new InvalidOperationException("redis-server is not running");
        using var kill = Process.Start("kill", [signal, pid.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
    }

    /// <summary>SIGKILL: no shutdown, no final fsync.</summary>
    public void Kill()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill();
            _process.WaitForExit();
        }
    }

    public async ValueTask DisposeAsync()
    {
        Kill();
        _process?.Dispose();
        try
        {
            Directory.Delete(_dataDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
        await Task.CompletedTask;
    }

    /// <summary>
    /// A free port below the kernel's ephemeral range. Tests kill and restart servers on the same port: a port from
    /// the ephemeral range can meanwhile become the source port of any outgoing connection, and the restart fails.
    /// </summary>
    private static int FreePortOutsideEphemeralRange()
    {
        var ephemeralStart = 32768;
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            ephemeralStart = int.Parse(range[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
        }
        if (ephemeralStart <= 11_000)
        {
            return FreePort();
        }
        for (var attempt = 0; attempt < 50; attempt++)
        {
            var port = Random.Shared.Next(10_000, ephemeralStart);
            // Never one this process handed out before: a test that killed its server (to restart it on the same port)
            // leaves the port free meanwhile, and another test's server there would answer its clients instead.
            if (!HandedOut.TryAdd(port, true))
            {
                continue;
            }
            try
            {
                using var listener = new TcpListener(IPAddress.Loopback, port);
                listener.Start();
                return port;
            }
            catch (SocketException)
            {
                // Taken by another process on this shared machine: another one.
            }
        }
        return FreePort();
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, bool> HandedOut = new();

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>
/// A loopback port that refuses connections for as long as this lives: bound, never listening, so no other
/// test's server can take it meanwhile (a port merely found free could be).
/// </summary>
public sealed class ClosedPort : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

    public ClosedPort() => _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));

    public int Port => ((IPEndPoint)_socket.LocalEndPoint!).Port;

    /// <summary>A Redis connection string to this port whose commands fail within about a second.</summary>
    public string RedisConnectionString => $"127.0.0.1:{Port},abortConnect=false,connectTimeout=300,asyncTimeout=1000,syncTimeout=1000";

    public void Dispose() => _socket.Dispose();
}

/// <summary>A database of the shared Redis, flushed, for one test; returned to the pool when disposed.</summary>
public sealed class RedisLease(string connectionString, int database, Action<int> release) : IAsyncDisposable
{
    public string ConnectionString { get; } = connectionString;

    public ValueTask DisposeAsync()
    {
        release(database);
        return ValueTask.CompletedTask;
    }
}

/// <summary>A leased database and a connection to it, for tests that call the relay's Redis code directly.</summary>
public sealed class LeasedRedis(RedisLease lease, ConnectionMultiplexer connection) : IAsyncDisposable
{
    public ConnectionMultiplexer Connection { get; } = connection;

    public IDatabase Db => Connection.GetDatabase();

    public async ValueTask DisposeAsync()
    {
        await Connection.DisposeAsync();
        await lease.DisposeAsync();
    }
}

/// <summary>
/// The run's shared Redis: <c>REDIS_URL</c> when set, else one redis-server started for the run. Each test
/// leases a database of its own (the relay's keys are fixed, so tests must not share one).
/// </summary>
public static class SharedRedis
{
    private static readonly Lazy<Task<string>> Server = new(StartAsync);
    private static readonly SemaphoreSlim Available = new(0);
    private static readonly System.Collections.Concurrent.ConcurrentQueue<int> Free = new();
    private static RedisServer? _owned;

    /// <summary>A leased database, connected.</summary>
    public static async Task<LeasedRedis> ConnectAsync()
    {
        var lease = await LeaseAsync();
        return new LeasedRedis(lease, await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString));
    }

    public static async Task<RedisLease> LeaseAsync()
    {
        var endpoint = await Server.Value;
        await Available.WaitAsync(TimeSpan.FromMinutes(5));
        if (!Free.TryDequeue(out var database))
        {
            throw new InvalidOperationException("No Redis database free.");
        }
        // Generous timeouts: one test process hosts several services on 2 shared cores.
        var connectionString = $"{endpoint},defaultDatabase={database},abortConnect=false,asyncTimeout=15000,syncTimeout=15000";
        await using (var connection = await ConnectionMultiplexer.ConnectAsync(connectionString + ",allowAdmin=true"))
        {
            await connection.GetDatabase(database).ExecuteAsync("FLUSHDB");
        }
        return new RedisLease(connectionString, database, d =>
        {
            Free.Enqueue(d);
            Available.Release();
        });
    }

    private static async Task<string> StartAsync()
    {
        string endpoint;
        var url = Environment.GetEnvironmentVariable("REDIS_URL");
        if (!string.IsNullOrEmpty(url))
        {
            var uri = url.Contains("://", StringComparison.Ordinal) ? new Uri(url) : new Uri("redis://" + url);
            endpoint = $"{uri.Host}:{(uri.Port > 0 ? uri.Port : 6379)}";
        }
        else
        {
            _owned = await RedisServer.StartAsync(null, "--databases", "64");
            AppDomain.CurrentDomain.ProcessExit += (_, _) => _owned.Kill();
            endpoint = $"127.0.0.1:{_owned.Port}";
        }
        await using var connection = await ConnectionMultiplexer.ConnectAsync(endpoint + ",allowAdmin=true");
        var databases = connection.GetServer(connection.GetEndPoints()[0]).DatabaseCount;
        // Database 0 is left alone: on a REDIS_URL server it may hold someone else's data.
        for (var i = 1; i < databases; i++)
        {
            Free.Enqueue(i);
        }
        Available.Release(databases - 1);
        return endpoint;
    }
}
