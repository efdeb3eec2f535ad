using System.Globalization;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Redis;

public class RedisMemoryTests
{
    [Fact]
    public async Task IsFullAsync_RealRedisBelowThenOverItsLimit_FalseThenTrue()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var admin = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",allowAdmin=true");
        // Connected as the Dispatcher is, without allowAdmin: the check must work with what it has.
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);

        Assert.False(await RedisMemory.IsFullAsync(dispatcher));
        await admin.GetDatabase().ExecuteAsync("CONFIG", "SET", "maxmemory", "100mb");
        Assert.False(await RedisMemory.IsFullAsync(dispatcher));

        await RedisServer.FillAsync(admin.GetDatabase());

        Assert.True(await RedisMemory.IsFullAsync(dispatcher));
        // What the answer is for: Redis refuses a write.
        var refused = await Assert.ThrowsAsync<RedisServerException>(() => dispatcher.GetDatabase().StringSetAsync("more", "x"));
        Assert.Contains("OOM", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task IsFullAsync_RedisAway_Null()
    {
        var redis = await RedisServer.StartAsync();
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);
        await redis.DisposeAsync();

        Assert.Null(await RedisMemory.IsFullAsync(dispatcher));
    }

    [Fact]
    public async Task IsFullAsync_ReplicaListedFirst_AsksThePrimary()
    {
        await using var primary = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var replica = await RedisServer.StartAsync(null, "--replicaof", "127.0.0.1", primary.Port.ToString(CultureInfo.InvariantCulture));
        await using var admin = await ConnectionMultiplexer.ConnectAsync(primary.ConnectionString + ",allowAdmin=true");
        // The replica has no limit of its own, and a replica ignores one anyway: asked, it would say "not full".
        await RedisServer.FillAsync(admin.GetDatabase());
        await using var both = await ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{replica.Port},127.0.0.1:{primary.Port},abortConnect=false");
        await Eventually.HoldsAsync(() => Task.FromResult(both.GetServers().Count(s => s.IsConnected) == 2 && both.GetServers().Count(s => s.IsReplica) == 1),
            TimeSpan.FromSeconds(20), "the client sees the replica as a replica");

        Assert.True(await RedisMemory.IsFullAsync(both));

        await using var replicaOnly = await ConnectionMultiplexer.ConnectAsync(replica.ConnectionString);
        // No primary to ask: unknown, not the replica's "not full", and not blind for good (a failover passes).
        Assert.Equal((null, null), await RedisMemory.ReadAsync(replicaOnly));
    }

    [Fact]
    public async Task ReadAsync_InfoDisabledInTheClientsCommandMap_UnknownAndBlind()
    {
        await using var redis = await RedisServer.StartAsync();
        var options = ConfigurationOptions.Parse(redis.ConnectionString);
        options.CommandMap = CommandMap.Create(new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "INFO" }, available: false);
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(options);

        var (full, blind) = await RedisMemory.ReadAsync(dispatcher);

        Assert.Null(full);
        Assert.Contains("does not send INFO", blind, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ReadAsync_RedisBusyWithAScript_UnknownButNotBlind()
    {
        await using var redis = await RedisServer.StartAsync(null, "--busy-reply-threshold", "100");
        await using var scripting = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);
        var endless = scripting.GetDatabase().ScriptEvaluateAsync("while true do end", flags: CommandFlags.NoScriptCache);
        try
        {
            // Redis answers BUSY once the script has run past the threshold: a state that passes, not a setting.
            (bool? Full, string? Blind) read = default;
            await Eventually.HoldsAsync(async () =>
            {
                try
                {
                    await dispatcher.GetDatabase().PingAsync();
                    return false;
                }
                catch (RedisServerException ex) when (ex.Message.StartsWith("BUSY", StringComparison.Ordinal))
                {
                    read = await RedisMemory.ReadAsync(dispatcher);
                    return true;
                }
            }, TimeSpan.FromSeconds(10), "Redis answers BUSY");

            Assert.Equal((null, null), read);
        }
        finally
        {
            await redis.KillScriptAsync();
            await Assert.ThrowsAnyAsync<RedisException>(() => endless);
        }
    }

    [Fact]
    public async Task ReadAsync_InfoRenamedAwayInRedis_UnknownAndBlind()
    {
        await using var redis = await RedisServer.StartAsync(null, "--rename-command", "INFO", "");
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);

        var (full, blind) = await RedisMemory.ReadAsync(dispatcher);

        Assert.Null(full);
        Assert.Contains("Redis refused INFO (ERR unknown command", blind, StringComparison.Ordinal);
        Assert.Contains("rename-command", blind, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ReadAsync_BehindEnvoyProxy_UnknownAndBlind()
    {
        await using var redis = await RedisServer.StartAsync();
        // The client's envoy mode leaves INFO out of its command map: the answer is unknown, and no exception escapes.
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",proxy=envoyproxy");

        var (full, blind) = await RedisMemory.ReadAsync(dispatcher);

        Assert.Null(full);
        Assert.Contains("does not send INFO", blind, StringComparison.Ordinal);
    }

    [Fact]
    public async Task IsFullAsync_Cancelled_Throws()
    {
        await using var redis = await RedisServer.StartAsync();
        await using var dispatcher = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => RedisMemory.IsFullAsync(dispatcher, new CancellationToken(canceled: true)));
    }

    [Theory]
    [InlineData("used_memory:2000\r\nmaxmemory:1000\r\nmem_not_counted_for_evict:0\r\n", true)]
    [InlineData("used_memory:2000\r\nmaxmemory:1000\r\nmem_not_counted_for_evict:1500\r\n", false)]
    [InlineData("used_memory:1000\r\nmaxmemory:1000\r\n", false)]
    [InlineData("used_memory:2000\r\nmaxmemory:0\r\n", false)]
    [InlineData("# Memory\r\nused_memory_human:1.95K\r\nused_memory:2000\r\nused_memory_rss:9000\r\nmaxmemory_human:1000B\r\nmaxmemory:1000\r\n", true)]
    public void IsFull_InfoMemoryReply_RedisOwnRule(string info, bool full)
    {
        Assert.Equal(full, RedisMemory.IsFull(info));
    }

    [Theory]
    [InlineData("")]
    [InlineData(null)]
    [InlineData("maxmemory:1000\r\n")]
    [InlineData("used_memory:x\r\nmaxmemory:1000\r\n")]
    public void IsFull_FieldMissingOrDamaged_Null(string? info)
    {
        Assert.Null(RedisMemory.IsFull(info));
    }
}
