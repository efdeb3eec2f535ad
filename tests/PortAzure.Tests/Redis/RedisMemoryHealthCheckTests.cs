using Microsoft.Extensions.Diagnostics.HealthChecks;
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
        await admin.GetDatabase().StringSetAsync("filler", new string('x', 4 * 1024 * 1024));
        await admin.GetDatabase().ExecuteAsync("CONFIG", "SET", "maxmemory", "1mb");
        await using var relay = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",user=relay,password=relay-pw");

        // Full, but this user cannot see it: unknown, not "not full".
        Assert.Null(await RedisMemory.IsFullAsync(relay));
        var result = await new RedisMemoryHealthCheck(relay).CheckHealthAsync(new HealthCheckContext());

        // Not Unhealthy: a probe reading it would pull a relay that works from rotation for want of a permission.
        Assert.Equal(HealthStatus.Healthy, result.Status);
        Assert.Contains("could not be read", result.Description, StringComparison.Ordinal);
        Assert.Equal(HealthStatus.Degraded, (await new RedisMemoryHealthCheck(admin).CheckHealthAsync(new HealthCheckContext())).Status);
    }

    [Fact]
    public async Task CheckHealthAsync_RoomLeft_HealthyWithoutRemark()
    {
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction", "--maxmemory", "100mb");
        await using var relay = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString);

        var result = await new RedisMemoryHealthCheck(relay).CheckHealthAsync(new HealthCheckContext());

        Assert.Equal(HealthStatus.Healthy, result.Status);
        Assert.Null(result.Description);
    }
}
