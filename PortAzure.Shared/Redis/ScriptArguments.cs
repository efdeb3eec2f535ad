using StackExchange.Redis;

namespace PortAzure.Redis;

/// <summary>How the Lua scripts take a stream entry's fields: after their own arguments, as name/value pairs.</summary>
public static class ScriptArguments
{
    /// <summary>The <paramref name="leading"/> arguments, then each field's name and value.</summary>
    public static RedisValue[] WithFields(NameValueEntry[] fields, params ReadOnlySpan<RedisValue> leading)
    {
        ArgumentNullException.ThrowIfNull(fields);
        var args = new RedisValue[leading.Length + (fields.Length * 2)];
        leading.CopyTo(args);
        var i = leading.Length;
        foreach (var field in fields)
        {
            args[i++] = field.Name;
            args[i++] = field.Value;
        }
        return args;
    }
}
