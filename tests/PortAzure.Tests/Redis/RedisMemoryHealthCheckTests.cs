using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Redis;

public class RedisMemoryHealthCheckTests
{
    [Fact]
    public async Task CheckHealthAsync_InfoDeniedByAcl_HealthyAndSaysItIsBlind()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var admin = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",allowAdmin=true");
        await admin.GetDatabase().ExecuteAsync("ACL", "SETUSER", "relay", "on", ">relay-pw", "~*", "&*", "+@all", "-info");
        await RedisServer.FillAsync(admin.GetDatabase());
        await using var relay = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",user=relay,password=relay-pw");

        // Full, but this user cannot see it: unknown, not "not full".
        Assert.Null(await RedisMemory.IsFullAsync(relay));
        using var sink = new LogSink();
        using var loggers = LoggerFactory.Create(l => l.AddProvider(sink));
        var check = new RedisMemoryHealthCheck(relay, loggers.CreateLogger<RedisMemoryHealthCheck>());

        var result = await check.CheckHealthAsync(new HealthCheckContext());
        await check.CheckHealthAsync(new HealthCheckContext());

        // Not Unhealthy: a probe reading it would pull a relay that works from rotation for want of a permission.
        Assert.Equal(HealthStatus.Healthy, result.Status);
        Assert.Contains("could not be read: Redis refused INFO (NOPERM", result.Description, StringComparison.Ordinal);
        // Nobody reads a Healthy check's description: the blindness is said once, where it is seen.
        var line = Assert.Single(sink.Lines, l => l.Contains("[3003]", StringComparison.Ordinal));
        Assert.StartsWith("Warning", line, StringComparison.Ordinal);
        Assert.Contains("cannot read Redis's memory: Redis refused INFO (NOPERM", line, StringComparison.Ordinal);
        Assert.Contains("grant +info to the relay's Redis user", line, StringComparison.Ordinal);
        sink.AssertNoneContain(["relay-pw"]);
        Assert.Equal(HealthStatus.Degraded, (await NewCheck(admin).CheckHealthAsync(new HealthCheckContext())).Status);
    }

    [Fact]
    public async Task CheckHealthAsync_RoomLeft_HealthyWithoutRemark()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction", "--maxmemory", "100mb");
        await using var relay = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);

        var result = await NewCheck(relay).CheckHealthAsync(new HealthCheckContext());

        Assert.Equal(HealthStatus.Healthy, result.Status);
        Assert.Null(result.Description);
    }

    [Fact]
    public async Task CheckHealthAsync_RedisAway_HealthyWithoutAWarning()
    {
        var redis = await RedisServer.StartAsync();
        await using var relay = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);
        await redis.DisposeAsync();
        using var sink = new LogSink();
        using var loggers = LoggerFactory.Create(l => l.AddProvider(sink));

        var result = await new RedisMemoryHealthCheck(relay, loggers.CreateLogger<RedisMemoryHealthCheck>()).CheckHealthAsync(new HealthCheckContext());

        // The Redis client's own check reports an outage; this one is not blind for it, and says nothing of a setting.
        Assert.Equal(HealthStatus.Healthy, result.Status);
        Assert.Contains("Redis was away or busy", result.Description, StringComparison.Ordinal);
        Assert.Empty(sink.Lines);
    }

    private static RedisMemoryHealthCheck NewCheck(IConnectionMultiplexer redis) => new(redis, NullLogger<RedisMemoryHealthCheck>.Instance);
}
